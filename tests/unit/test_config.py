"""Configuration: defaults, the TUNECTL_ prefix, and provider credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.errors import MissingCredential


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "TUNECTL_DATABASE_URL",
                 "TUNECTL_DATABASE_URL_FILE", "TUNECTL_BROKER_URL", "TUNECTL_BROKER_URL_FILE",
                 "TUNECTL_DATA_DIR", "TUNECTL_OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_the_embedded_default_needs_no_servers(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = Settings()

    assert settings.data_dir == tmp_path / "tunectl"
    assert settings.database_url == f"sqlite:///{tmp_path}/tunectl/tunectl.db"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/tunectl/broker.db"
    assert settings.openai_base_url == "https://api.openai.com/v1"


def test_env_vars_with_the_prefix_configure_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNECTL_DATABASE_URL", "postgresql://pg/db")
    monkeypatch.setenv("TUNECTL_BROKER_URL", "redis://r:6379/0")
    monkeypatch.setenv("TUNECTL_OPENAI_BASE_URL", "http://proxy.internal/v1")
    monkeypatch.setenv("TUNECTL_POLL_INTERVAL_S", "12.5")
    settings = Settings()

    assert (settings.database_url, settings.broker_url) == ("postgresql://pg/db",
                                                            "redis://r:6379/0")
    assert settings.openai_base_url == "http://proxy.internal/v1"
    assert settings.poll_interval_s == 12.5


def test_the_openai_key_comes_from_the_usual_variable_and_is_never_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-123456")
    settings = Settings()

    assert settings.credential("openai_api_key") == "sk-from-env-123456"
    assert "sk-from-env" not in repr(settings)


def test_a_key_file_works_and_a_missing_key_says_how_to_fix_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(MissingCredential, match="OPENAI_API_KEY is not set; export it or set "
                       "OPENAI_API_KEY_FILE"):
        Settings().credential("openai_api_key")
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-123456\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key_file))
    assert Settings().credential("openai_api_key") == "sk-from-file-123456"
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(MissingCredential, match="cannot be read"):
        Settings().credential("openai_api_key")


def test_the_database_and_broker_urls_may_come_from_files(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """They hold passwords: a Kubernetes Secret, a compose secret or a systemd credential
    mounts them as files, like the provider keys."""
    (tmp_path / "db").write_text("postgresql://tunectl:s3cret@db/tunectl\n")
    (tmp_path / "broker").write_text("redis://:s3cret@redis:6379/0\n")
    monkeypatch.setenv("TUNECTL_DATABASE_URL_FILE", str(tmp_path / "db"))
    monkeypatch.setenv("TUNECTL_BROKER_URL_FILE", str(tmp_path / "broker"))
    settings = Settings()

    assert settings.database_url == "postgresql://tunectl:s3cret@db/tunectl"
    assert settings.broker_url == "redis://:s3cret@redis:6379/0"
    monkeypatch.setenv("TUNECTL_DATABASE_URL", "postgresql://other/db")
    assert Settings().database_url == "postgresql://other/db"  # the variable itself wins
    monkeypatch.setenv("TUNECTL_BROKER_URL_FILE", str(tmp_path / "absent"))
    with pytest.raises(MissingCredential, match="^TUNECTL_BROKER_URL_FILE=.*absent cannot be "
                       r"read \(No such file or directory\); fix the path$"):
        Settings()


def test_nonsense_timings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNECTL_LEASE_S", "0")
    with pytest.raises(ValueError, match="must be positive"):
        Settings()


def test_the_broker_must_not_redeliver_a_running_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNECTL_LEASE_S", "7200")
    with pytest.raises(ValueError, match="broker_visibility_timeout_s must be above lease_s"):
        Settings()


def test_an_upload_never_outlives_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNECTL_LEASE_S", "100")
    assert Settings().upload_deadline_s == 81.0
    monkeypatch.setenv("TUNECTL_LEASE_S", "3600")
    assert Settings().upload_deadline_s == 600.0


def test_dashscope_is_configured_by_its_own_variables(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_API_KEY_FILE", "DASHSCOPE_WORKSPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNECTL_DASHSCOPE_BASE_URL", "http://127.0.0.1:8765/dashscope/api/v1")
    monkeypatch.setenv("DASHSCOPE_WORKSPACE_ID", "ws-42")
    with pytest.raises(MissingCredential, match="DASHSCOPE_API_KEY is not set; export it or "
                       "set DASHSCOPE_API_KEY_FILE to a file"):
        Settings().credential("dashscope_api_key")
    key_file = tmp_path / "key"
    key_file.write_text("sk-ds-from-file\n")
    monkeypatch.setenv("DASHSCOPE_API_KEY_FILE", str(key_file))

    settings = Settings()

    assert settings.dashscope_base_url == "http://127.0.0.1:8765/dashscope/api/v1"
    assert settings.dashscope_workspace == "ws-42"
    assert settings.credential("dashscope_api_key") == "sk-ds-from-file"
    assert (settings.deploy_ttl_hours, settings.deploy_timeout_s) == (24.0, 3600.0)


@pytest.mark.parametrize(("name", "value"), [("TUNECTL_DEPLOY_TTL_HOURS", "-1"),
                                             ("TUNECTL_DEPLOY_TIMEOUT_S", "0")])
def test_nonsense_deployment_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str,
                                                  value: str) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValueError, match="deploy_ttl_hours must be 0"):
        Settings()
