"""The SSRF guard of outbound webhooks: where a webhook may be sent.

A webhook URL comes from a job spec or from configuration, so it could point at tunectl's
own machine, the private network or a cloud's metadata service. Before anything is sent,
the host (in its ASCII form: IDNA 2008, as it goes on the wire) is resolved once, within a
time limit, and *every* address it resolves to is checked against an explicit table of
the IANA special-purpose ranges (not ``ipaddress``'s ``is_private``/``is_global``, which
change between Python versions) and the cloud metadata services. An IPv6 address is
checked itself and, when it carries an IPv4 address (IPv4-mapped, NAT64, 6to4), that one
too; local-use NAT64, Teredo, IPv4-compatible and site-local addresses are refused
outright, and only global unicast (2000::/3) passes. The request then goes to the checked
address itself (``deliver.py`` connects to it and keeps the host name for the Host header
and TLS), so a second DNS answer (rebinding) never comes into play; redirects are never
followed. ``TUNECTL_WEBHOOK_ALLOW_NETWORKS`` lets named networks (optionally one port of
them) through: a development receiver.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.errors import DestinationRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Resolves (host, port) to addresses, like ``socket.getaddrinfo`` (tests inject their own).
Resolver = Callable[[str, int], list[str]]

#: Metadata services reachable from cloud machines: AWS, GCP and Azure's link-local one, AWS
#: ECS, AWS over IPv6, Azure's wire server (a public address), Alibaba Cloud (in CGNAT space).
METADATA: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "168.63.129.16", "100.100.100.200"))


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in rows)


#: IPv4 ranges no webhook goes to: the IANA IPv4 Special-Purpose Address Registry's entries
#: that are not globally reachable, with multicast and the reserved class E.
FORBIDDEN_V4 = _table(
    ("0.0.0.0/8", "unspecified or 'this network'"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "the deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (and broadcast)"),
)
#: IPv6 ranges no webhook goes to, besides everything outside global unicast 2000::/3: the
#: IANA IPv6 Special-Purpose Address Registry's entries that are not globally reachable,
#: and site-local (deprecated, still routed by some stacks).
FORBIDDEN_V6 = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/8", "reserved (IPv4-compatible and other ::/8 forms)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments (Teredo included)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


@dataclass(frozen=True)
class AllowedNetwork:
    """An entry of ``TUNECTL_WEBHOOK_ALLOW_NETWORKS``: a network the guard lets through,
    on one port only or (``port`` None) on every port."""

    network: IPNetwork
    port: int | None = None

    @classmethod
    def parse(cls, value: Any) -> AllowedNetwork:
        """``127.0.0.1/32``, ``127.0.0.1:9000``, ``10.0.0.0/8:8443``, ``::1``, ``[::1]:9000``
        or ``[fd00::/8]:8443``.

        Raises:
            ValueError: saying what is wrong.
        """
        if isinstance(value, AllowedNetwork):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{value!r}: give a network as a string, e.g. '127.0.0.1:9000'")
        text, port = value.strip(), None
        if text.startswith("["):
            text, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"{value!r}: write an IPv6 network with a port as [::1]:9000")
            port = rest[1:] or None
        elif text.count(":") == 1:
            text, port = text.split(":")
        try:
            network = ipaddress.ip_network(text, strict=False)
            number = None if port is None else int(port)
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        if number is not None and not 1 <= number <= 65535:
            raise ValueError(f"{value!r}: the port must be from 1 to 65535")
        return cls(network, number)

    def admits(self, ip: IPAddress, port: int) -> bool:
        """Whether ``ip``:``port`` is in this entry."""
        return (ip.version == self.network.version and ip in self.network
                and self.port in (None, port))


@dataclass(frozen=True)
class Destination:
    """A webhook URL and the checked address to send it to."""

    url: httpx.URL
    address: IPAddress

    @property
    def host(self) -> str:
        """The URL's host as it goes on the wire (ASCII: IDNA 2008 for a non-ASCII name),
        for the Host header and TLS."""
        return self.url.raw_host.decode("ascii")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, /etc/hosts included)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _lookups() -> ThreadPoolExecutor:
    """The threads lookups run in (one pool per process: a forked child makes its own)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-lookup")
            _pool_pid = os.getpid()
        return _pool


def lookup(resolver: Resolver, host: str, port: int, timeout: float) -> list[str]:
    """``resolver(host, port)``, given at most ``timeout`` seconds: the system resolver has
    no time limit of its own, so a lookup that hangs is left behind in its thread.

    Raises:
        OSError: the lookup failed or took too long.
    """
    future = _lookups().submit(resolver, host, port)
    try:
        return future.result(timeout=timeout)
    except LookupTimeout:
        future.cancel()
        raise OSError(f"looking up {host} took over {timeout:g} s") from None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address of a wrapping form routes to (IPv4-mapped, NAT64's
    well-known prefix, 6to4), if it is one."""
    if ip in _MAPPED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    return None


def why_forbidden(ip: IPAddress) -> str | None:
    """Why a webhook may not go to ``ip`` (None if it may)."""
    if ip in METADATA:
        return "a cloud metadata service"
    if isinstance(ip, ipaddress.IPv4Address):
        return next((why for net, why in FORBIDDEN_V4 if ip in net), None)
    inner = _embedded_ipv4(ip)
    if inner is not None:
        why = why_forbidden(inner)
        return f"{why}, wrapped in IPv6 as {inner}" if why else None
    found = next((why for net, why in FORBIDDEN_V6 if ip in net), None)
    if found is None and ip not in _GLOBAL_UNICAST:
        return "not global unicast"
    return found


def _allowed(ip: IPAddress, port: int, allow: Sequence[AllowedNetwork]) -> bool:
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return any(entry.admits(candidate, port)
               for entry in allow for candidate in (ip, inner) if candidate is not None)


def check_url(url: str) -> httpx.URL:
    """``url`` parsed, if it is a webhook URL at all: http or https, a host, no user info.

    Raises:
        DestinationRefused: saying what is wrong with it.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise DestinationRefused(f"{url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise DestinationRefused(f"{url!r}: only http and https URLs can receive webhooks")
    if not parsed.host:
        raise DestinationRefused(f"{url!r} has no host")
    if parsed.userinfo:
        raise DestinationRefused(f"{url!r}: user names and passwords in webhook URLs are not "
                                 "allowed; sign requests with a secret instead")
    return parsed


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def check_literal(url: str, allow: Sequence[AllowedNetwork]) -> None:
    """What can be checked without DNS (at submit time): the URL, and its host if that is an
    IP address or ``localhost``.

    Raises:
        DestinationRefused: the URL or its literal address is refused.
    """
    parsed = check_url(url)
    host = parsed.raw_host.decode("ascii").rstrip(".").lower()
    ip: IPAddress
    if host == "localhost" or host.endswith(".localhost"):
        ip = ipaddress.IPv4Address("127.0.0.1")
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:  # the shorthands resolvers read as IPv4: 0x7f000001, 2130706433, 127.1
                ip = ipaddress.IPv4Address(socket.inet_aton(host))
            except OSError:
                return
    why = why_forbidden(ip)
    if why and not _allowed(ip, parsed.port or _default_port(parsed.scheme), allow):
        raise DestinationRefused(f"{url!r} points at {host} ({why}); webhooks go only to "
                                 "public addresses (see TUNECTL_WEBHOOK_ALLOW_NETWORKS)")


def resolve(url: str, allow: Sequence[AllowedNetwork], resolver: Resolver = system_resolver,
            *, timeout: float = 10.0) -> Destination:
    """Resolve the URL's host once (within ``timeout`` seconds) and check every address;
    the first one is where the webhook goes.

    Raises:
        DestinationRefused: the URL, or any address of its host, is refused.
        OSError: the host cannot be resolved (in time).
    """
    parsed = check_url(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or _default_port(parsed.scheme)
    addresses = [ipaddress.ip_address(a.split("%", 1)[0])
                 for a in lookup(resolver, host, port, timeout)]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for ip in addresses:
        why = why_forbidden(ip)
        if why and not _allowed(ip, port, allow):
            raise DestinationRefused(f"{host} resolves to {ip} ({why}); webhooks go only "
                                     "to public addresses (see TUNECTL_WEBHOOK_ALLOW_NETWORKS)")
    return Destination(parsed, addresses[0])
