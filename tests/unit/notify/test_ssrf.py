"""The SSRF guard: forbidden destinations are refused before any packet is sent, the host is
resolved once (in its ASCII form, within a time limit) and the checked address is the one
connected, over HTTPS with the host name's certificate, and redirects are not followed."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.errors import DestinationRefused
from orchestrator.notify import deliver, ssrf
from orchestrator.notify.receiver import Receiver
from tests.helpers import SECRET, Clock, claim_deliveries, hooked_job

PUBLIC = "93.184.215.14"
LOOPBACK = [ssrf.AllowedNetwork.parse("127.0.0.1/32")]


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
    pytest.param("http://[64:ff9b:1:a00:0:100:808:808]/", None, id="local-use-nat64"),
    pytest.param("http://[64:ff9b:1::808:808]/", None, id="local-use-nat64-public-inside"),
    pytest.param("http://[2002:a00:1::]/", None, id="6to4-private"),
    pytest.param("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", None, id="teredo-private"),
    pytest.param("http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/", None, id="teredo-public"),
    pytest.param("http://[fec0::1]/", None, id="ipv6-site-local"),
    pytest.param("http://[100::1]/", None, id="ipv6-discard-only"),
    pytest.param("http://[2001:db8::1]/", None, id="ipv6-documentation"),
    pytest.param("http://[ff02::1]/", None, id="ipv6-multicast"),
    pytest.param("http://[4000::1]/", None, id="ipv6-not-global-unicast"),
    pytest.param("http://198.18.0.1/", None, id="benchmarking"),
    pytest.param("http://192.0.2.10/", None, id="documentation"),
    pytest.param("http://192.0.0.8/", None, id="ietf-protocol-assignments"),
    pytest.param("http://0x7f000001/", None, id="hex-loopback"),
    pytest.param("http://2130706433/", None, id="decimal-loopback"),
    pytest.param("http://localhost:8080/hook", None, id="localhost-name"),
    pytest.param("https://hooks.example.test/", ["127.0.0.1"], id="name-resolving-to-loopback"),
    pytest.param("https://hooks.example.test/", [PUBLIC, "10.0.0.7"],
                 id="one-private-answer-among-public-ones"),
    pytest.param("https://hooks.example.test/", ["::ffff:169.254.169.254"],
                 id="name-resolving-to-mapped-metadata"),
    pytest.param("https://hooks.example.test/", ["64:ff9b:1::808:808"],
                 id="name-resolving-to-local-use-nat64"),
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


    def test_a_redirect_to_a_private_address_is_never_followed(
            self, engine: sa.Engine, hook_settings: Settings,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """The endpoint (let through on loopback) answers 302 to the metadata service: the
        attempt fails with the 302 and no connection is ever opened to the metadata
        address."""
        connects: list[object] = []
        real_connect = socket.socket.connect

        def spy(sock: socket.socket, address: object) -> None:
            connects.append(address)
            real_connect(sock, address)

        monkeypatch.setattr(socket.socket, "connect", spy)
        allowed = hook_settings.model_copy(update={"webhook_allow_networks": LOOPBACK})
        clock = Clock()
        metadata = "http://169.254.169.254/latest/meta-data/"
        with Receiver(SECRET, respond=lambda _: (302, {"location": metadata})) as hook:
            hooked_job(engine, hook.url, clock())
            lease, [delivery_id] = claim_deliveries(engine, clock())

            result = deliver.run(delivery_id, lease, settings=allowed, engine=engine,
                                 now=clock)

        assert result.startswith("retry in") and len(hook.received) == 1
        assert [address[0] for address in connects] == ["127.0.0.1"]  # type: ignore[index]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT status_code, error FROM webhook_attempts"
                                        ).one() == (302, "HTTP 302")


class TestAllowed:
    @pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2001:4860:4860::8888",
                                         "::ffff:8.8.8.8", "64:ff9b::808:808",
                                         "2002:808:808::1"])
    def test_public_addresses_pass(self, address: str) -> None:
        destination = ssrf.resolve("https://hooks.example.com/x", [], answering([address]))
        assert destination.address == ipaddress.ip_address(address)

    def test_the_allow_list_lets_named_networks_through_and_no_others(self) -> None:
        assert str(ssrf.resolve("http://127.0.0.1:9/", LOOPBACK).address) == "127.0.0.1"
        assert ssrf.resolve("http://[::ffff:127.0.0.1]:9/", LOOPBACK).address == \
            ipaddress.ip_address("::ffff:127.0.0.1")
        for other in ("http://127.0.0.2/", "http://10.0.0.1/"):
            with pytest.raises(DestinationRefused):
                ssrf.resolve(other, LOOPBACK)

    def test_an_allowed_network_with_a_port_opens_that_port_only(self) -> None:
        allow = [ssrf.AllowedNetwork.parse("127.0.0.1:9000"),
                 ssrf.AllowedNetwork.parse("[::1]:9001")]

        assert str(ssrf.resolve("http://127.0.0.1:9000/", allow).address) == "127.0.0.1"
        assert str(ssrf.resolve("http://[::1]:9001/", allow).address) == "::1"
        for other in ("http://127.0.0.1:9001/", "http://127.0.0.1/", "http://[::1]:9000/"):
            with pytest.raises(DestinationRefused):
                ssrf.resolve(other, allow)
        with pytest.raises(DestinationRefused):
            ssrf.check_literal("http://127.0.0.1:22/", allow)

    @pytest.mark.parametrize("entry", ["127.0.0.1:0", "127.0.0.1:http", "[::1", "::1]:80",
                                       "300.0.0.1", "[::1]x"])
    def test_a_malformed_allow_list_entry_is_refused(self, entry: str) -> None:
        with pytest.raises(ValueError, match=repr(entry).replace("[", r"\[")):
            ssrf.AllowedNetwork.parse(entry)

    def test_the_host_is_resolved_in_its_idna_2008_ascii_form(self) -> None:
        """faß.de is xn--fa-hia.de under IDNA 2008; Python's own codec (IDNA 2003) would
        look up fass.de, another domain."""
        asked: list[str] = []

        def resolver(host: str, port: int) -> list[str]:
            asked.append(host)
            return [PUBLIC]

        destination = ssrf.resolve("https://faß.de/hook", [], resolver)

        assert asked == ["xn--fa-hia.de"] and destination.host == "xn--fa-hia.de"

    def test_a_lookup_that_hangs_gives_up_at_its_time_limit(self) -> None:
        released = threading.Event()

        def hanging(host: str, port: int) -> list[str]:
            released.wait(10)
            return [PUBLIC]

        try:
            with pytest.raises(OSError, match=r"looking up hooks.example.com took over 0.1 s"):
                ssrf.resolve("https://hooks.example.com/", [], hanging, timeout=0.1)
        finally:
            released.set()

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
        allowed = hook_settings.model_copy(update={"webhook_allow_networks": LOOPBACK})
        with Receiver(SECRET) as hook:
            port = hook.port
            hooked_job(engine, f"http://hooks.example.test:{port}/webhooks", clock())
            lease, [delivery_id] = claim_deliveries(engine, clock())

            assert deliver.run(delivery_id, lease, settings=allowed, engine=engine,
                               now=clock, resolver=rebinding) == "delivered"

        assert lookups == ["hooks.example.test"]
        [got] = hook.received
        assert got.verified and got.webhook_id == delivery_id
        assert got.headers["host"] == f"hooks.example.test:{port}"


def certificate(directory: Path, name: str) -> Path:
    """A self-signed certificate for ``name`` and its key, in one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


class TestHttps:
    """Over HTTPS the connection goes to the checked IP address while TLS names the URL's
    host: SNI carries it, and the certificate must be valid for it."""

    def attempt(self, engine: sa.Engine, settings: Settings, tmp_path: Path,
                certified: str) -> tuple[str, Receiver, list[str | None]]:
        """Deliver to https://hooks.example.test (resolving to loopback) served with a
        trusted certificate for ``certified``; what came of it, the server, and the names
        SNI gave it."""
        pem = certificate(tmp_path, certified)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(pem)
        names: list[str | None] = []
        server.sni_callback = lambda _s, name, _c: names.append(name)  # type: ignore[assignment,misc]
        clock = Clock()
        allowed = settings.model_copy(update={"webhook_allow_networks": LOOPBACK})
        with Receiver(SECRET, tls=server) as hook, deliver.new_client(
                settings, verify=ssl.create_default_context(cafile=str(pem))) as client:
            hooked_job(engine, f"https://hooks.example.test:{hook.port}/webhooks", clock())
            lease, [delivery_id] = claim_deliveries(engine, clock())
            result = deliver.run(delivery_id, lease, settings=allowed, engine=engine,
                                 now=clock, resolver=answering(["127.0.0.1"]), client=client)
        return result, hook, names

    def test_sni_and_the_certificate_name_the_host_while_the_checked_ip_is_connected(
            self, engine: sa.Engine, hook_settings: Settings, tmp_path: Path) -> None:
        result, hook, names = self.attempt(engine, hook_settings, tmp_path,
                                           "hooks.example.test")

        assert result == "delivered" and names == ["hooks.example.test"]
        [got] = hook.received
        assert got.verified and got.headers["host"] == f"hooks.example.test:{hook.port}"

    def test_a_certificate_for_another_name_is_refused(
            self, engine: sa.Engine, hook_settings: Settings, tmp_path: Path) -> None:
        result, hook, _ = self.attempt(engine, hook_settings, tmp_path, "other.example.test")

        assert result.startswith("retry in") and hook.received == []
        with engine.connect() as conn:
            error = conn.exec_driver_sql("SELECT error FROM webhook_attempts").scalar_one()
        assert "Hostname mismatch" in error and "hooks.example.test" in error
