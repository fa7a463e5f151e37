"""Helpers for servers started on this machine (the demo's, the benchmarks' and the tests'):
a free loopback port, and waiting until a local HTTP server answers."""

from __future__ import annotations

import socket
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, deadline: float) -> None:
    """Wait until ``url`` answers 200, until ``deadline`` (a ``time.monotonic()`` time).

    Raises:
        RuntimeError: it did not answer in time.
    """
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")
