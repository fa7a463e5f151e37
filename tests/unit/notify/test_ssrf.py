"""The SSRF guard: forbidden destinations are refused before any packet is sent, the host is
resolved once and the checked address is the one connected, redirects are not followed."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.errors import DestinationRefused
from orchestrator.notify import deliver, ssrf
from orchestrator.notify.receiver import Receiver
from tests.helpers import SECRET, Clock, claim_deliveries, hooked_job

PUBLIC = "93.184.215.14"


#: (URL, what the resolver answers for its host; None: the system resolver).
REFUSED = [
    pytest.param("http://127.0.0.1/", None, id="loopback"),
    pytest.param("http://10.1.2.3/", None, id="private-10"),
    pytest.param("http://172.16.0.1:8080/", None, id="private-172"),
    pytest.param("https://192.168.1.1/", None, id="private-192"),
    pytest.param("http://100.64.0.1/", None, id="cgnat"),
    pytest.param("http://169.254.169.254/latest/meta-data/", None, id="metadata-aws-gcp-azure"),
    pytest.param("http://168.63.129.16/", None, id="metadata-azure-wireserver"),
    pytest.param("http://100.100.100.200/", None, id="metadata-alibaba"),
    pytest.param("http://[fd00:ec2::254]/", None, id="metadata-aws-ipv6"),
    pytest.param("http://0.0.0.0/", None, id="unspecified"),
    pytest.param("http://224.0.0.1/", None, id="multicast"),
    pytest.param("http://240.0.0.1/", None, id="reserved"),
    pytest.param("http://[::1]/", None, id="ipv6-loopback"),
    pytest.param("http://[fe80::1]/", None, id="ipv6-link-local"),
    pytest.param("http://[fc00::1]/", None, id="ipv6-unique-local"),
    pytest.param("http://[::ffff:127.0.0.1]/", None, id="ipv4-mapped-loopback"),
    pytest.param("http://[::ffff:a9fe:a9fe]/", None, id="ipv4-mapped-metadata"),
    pytest.param("http://[::10.0.0.1]/", None, id="ipv4-compatible-private"),
    pytest.param("http://[64:ff9b::a9fe:a9fe]/", None, id="nat64-metadata"),
    pytest.param("http://[2002:a00:1::]/", None, id="6to4-private"),
    pytest.param("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", None, id="teredo-private"),
    pytest.param("http://0x7f000001/", None, id="hex-loopback"),
    pytest.param("http://2130706433/", None, id="decimal-loopback"),
    pytest.param("http://localhost:8080/hook", None, id="localhost-name"),
    pytest.param("https://hooks.example.test/", ["127.0.0.1"], id="name-resolving-to-loopback"),
    pytest.param("https://hooks.example.test/", [PUBLIC, "10.0.0.7"],
                 id="one-private-answer-among-public-ones"),
    pytest.param("https://hooks.example.test/", ["::ffff:169.254.169.254"],
                 id="name-resolving-to-mapped-metadata"),
]


class NoPackets:
    """Records (and refuses) every socket connection attempted while it is installed."""

    def __init__(self) -> None:
        self.connects: list[object] = []


@pytest.fixture
def no_packets(monkeypatch: pytest.MonkeyPatch) -> NoPackets:
    spy = NoPackets()

    def refuse(sock: socket.socket, address: object) -> None:
        spy.connects.append(address)
        raise AssertionError(f"a packet was about to be sent to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return spy


def answering(addresses: list[str] | None) -> ssrf.Resolver:
    if addresses is None:
        return ssrf.system_resolver
    return lambda host, port: list(addresses)


class TestRefusedBeforeAnyPacket:
    @pytest.mark.parametrize(("url", "addresses"), REFUSED)
    def test_the_guard_refuses(self, url: str, addresses: list[str] | None) -> None:
        with pytest.raises(DestinationRefused, match="webhooks go only to public addresses"):
            ssrf.resolve(url, [], answering(addresses))

    @pytest.mark.parametrize(("url", "addresses"), REFUSED)
    def test_a_delivery_attempt_refuses_without_connecting(
            self, engine: sa.Engine, hook_settings: Settings, no_packets: NoPackets, url: str,
            addresses: list[str] | None) -> None:
        clock = Clock()
        hooked_job(engine, url, clock())
        lease, [delivery_id] = claim_deliveries(engine, clock())

        result = deliver.run(delivery_id, lease, settings=hook_settings, engine=engine, now=clock,
                             resolver=answering(addresses))

        assert result.startswith("retry in")
        assert no_packets.connects == []
        with engine.connect() as conn:
            outcome, error = conn.exec_driver_sql(
                "SELECT outcome, error FROM webhook_attempts").one()
        assert outcome == "refused" and "webhooks go only to public addresses" in error

    @pytest.mark.parametrize("url", [
        pytest.param("ftp://hooks.example.com/", id="ftp"),
        pytest.param("file:///etc/passwd", id="file"),
        pytest.param("https://user:pass@hooks.example.com/", id="userinfo"),
        pytest.param("https:///path-only", id="no-host"),
    ])
    def test_only_plain_http_and_https_urls(self, url: str) -> None:
        with pytest.raises(DestinationRefused):
            ssrf.resolve(url, [], answering([PUBLIC]))


class TestAllowed:
    @pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2001:4860:4860::8888",
                                         "::ffff:8.8.8.8"])
    def test_public_addresses_pass(self, address: str) -> None:
        destination = ssrf.resolve("https://hooks.example.com/x", [], answering([address]))
        assert destination.address == ipaddress.ip_address(address)

    def test_the_allow_list_lets_named_networks_through_and_no_others(self) -> None:
        allow = [ipaddress.ip_network("127.0.0.1/32")]

        assert str(ssrf.resolve("http://127.0.0.1:9/", allow).address) == "127.0.0.1"
        assert ssrf.resolve("http://[::ffff:127.0.0.1]:9/", allow).address == \
            ipaddress.ip_address("::ffff:127.0.0.1")
        for other in ("http://127.0.0.2/", "http://10.0.0.1/"):
            with pytest.raises(DestinationRefused):
                ssrf.resolve(other, allow)

    def test_submit_time_checks_need_no_dns(self) -> None:
        with pytest.raises(DestinationRefused, match="loopback"):
            ssrf.check_literal("http://127.1:8080/", [])
        ssrf.check_literal("https://hooks.example.com/", [])  # names are checked when sent


class TestConnectsToTheCheckedAddress:
    def test_the_host_is_resolved_once_and_rebinding_is_never_asked(
            self, engine: sa.Engine, hook_settings: Settings) -> None:
        """The first answer is checked and connected to; a second lookup would have
        answered with the metadata address (DNS rebinding), but there is none."""
        answers = [["127.0.0.1"], ["169.254.169.254"]]
        lookups: list[str] = []

        def rebinding(host: str, port: int) -> list[str]:
            lookups.append(host)
            return answers.pop(0)

        clock = Clock()
        allowed = hook_settings.model_copy(
            update={"webhook_allow_networks": [ipaddress.ip_network("127.0.0.1/32")]})
        with Receiver(SECRET) as hook:
            port = hook.url.split(":")[2].split("/")[0]
            hooked_job(engine, f"http://hooks.example.test:{port}/webhooks", clock())
            lease, [delivery_id] = claim_deliveries(engine, clock())

            assert deliver.run(delivery_id, lease, settings=allowed, engine=engine,
                               now=clock, resolver=rebinding) == "delivered"

        assert lookups == ["hooks.example.test"]
        [got] = hook.received
        assert got.verified and got.webhook_id == delivery_id
        assert got.headers["host"] == f"hooks.example.test:{port}"
