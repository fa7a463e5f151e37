"""The SSRF guard of outbound webhooks: where a webhook may be sent.

A webhook URL comes from a job spec or from configuration, so it could point at tunectl's
own machine, the private network or a cloud's metadata service. Before anything is sent,
the host is resolved once and *every* address it resolves to is checked: loopback,
private, link-local, shared (CGNAT), multicast, reserved and unspecified addresses and the
cloud metadata services are refused, also when an IPv6 address wraps one (IPv4-mapped,
IPv4-compatible, 6to4, Teredo, NAT64). The request then goes to the checked address itself
(``deliver.py`` connects to it and keeps the host name for the Host header and TLS), so a
second DNS answer (rebinding) never comes into play; redirects are never followed.
``TUNECTL_WEBHOOK_ALLOW_NETWORKS`` lets named networks through (a development receiver).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class Destination:
    """A webhook URL and the checked address to send it to."""

    url: httpx.URL
    address: IPAddress


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, /etc/hosts included)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the forms that route to it."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _NAT64) or int(ip) >> 32 == 0:  # NAT64, IPv4-compatible
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_forbidden(ip: IPAddress) -> str | None:
    """Why a webhook may not go to ``ip`` (None if it may)."""
    if ip in METADATA:
        return "a cloud metadata service"
    if ip.is_unspecified or ip.is_loopback:
        return "unspecified" if ip.is_unspecified else "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = why_forbidden(inner)
            return f"{why}, wrapped in IPv6 as {inner}" if why else None
    for test, why in ((ip.is_link_local, "link-local"), (ip.is_multicast, "multicast"),
                      (ip in _SHARED, "shared address space (CGNAT)"),
                      (ip.is_private, "private"), (ip.is_reserved, "reserved")):
        if test:
            return why
    return None if ip.is_global else "not globally routable"


def _allowed(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return any(candidate.version == net.version and candidate in net
               for net in allow for candidate in (ip, inner) if candidate is not None)


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


def check_literal(url: str, allow: Sequence[IPNetwork]) -> None:
    """What can be checked without DNS (at submit time): the URL, and its host if that is an
    IP address or ``localhost``.

    Raises:
        DestinationRefused: the URL or its literal address is refused.
    """
    parsed = check_url(url)
    host = parsed.host.rstrip(".").lower()
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
    if why and not _allowed(ip, allow):
        raise DestinationRefused(f"{url!r} points at {host} ({why}); webhooks go only to "
                                 "public addresses (see TUNECTL_WEBHOOK_ALLOW_NETWORKS)")


def resolve(url: str, allow: Sequence[IPNetwork],
            resolver: Resolver = system_resolver) -> Destination:
    """Resolve the URL's host once and check every address; the first one is where the
    webhook goes.

    Raises:
        DestinationRefused: the URL, or any address of its host, is refused.
        OSError: the host cannot be resolved.
    """
    parsed = check_url(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(parsed.host, port)]
    if not addresses:
        raise OSError(f"{parsed.host} resolves to no address")
    for ip in addresses:
        why = why_forbidden(ip)
        if why and not _allowed(ip, allow):
            raise DestinationRefused(f"{parsed.host} resolves to {ip} ({why}); webhooks go only "
                                     "to public addresses (see TUNECTL_WEBHOOK_ALLOW_NETWORKS)")
    return Destination(parsed, addresses[0])
