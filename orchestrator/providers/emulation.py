"""What every provider emulator shares: the fault knobs, the store that counts requests and
hands faults out, the middleware that applies them, the admin routes, and serving every
installed provider's emulator from one process.

A request to an emulator's API goes through the middleware in this order:

    count → auth → fault (429 or 5xx instead of the real answer) → process → hold (latency)

so a throttled or failed request has no side effect, and a held one has had it (a client
killed while it waits still leaves the file, job or deployment behind). Each emulator says
how its provider words a refusal (``Refusals``); everything else here is provider-neutral.
Admin routes live beside the API of each emulator:

    GET  <prefix>/_emulator/scenario    the current scenario (fault counts left)
    PUT  <prefix>/_emulator/scenario    replace it
    POST <prefix>/_emulator/reset       forget every object and counter
    GET  <prefix>/_emulator/stats       objects, requests per route, faults injected
"""

from __future__ import annotations

import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# --- Scenario knobs ---------------------------------------------------------------------------


class RouteFilter(BaseModel):
    """Which requests a knob applies to: a regex searched in the path (relative to where the
    emulator is mounted; empty matches every API route), and optionally methods."""

    model_config = ConfigDict(extra="forbid")

    routes: str = ""
    methods: list[str] | None = None  # None: every method

    @field_validator("routes")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value

    def matches(self, method: str, path: str) -> bool:
        """Whether a request falls under this knob."""
        allowed = self.methods is None or method.upper() in {m.upper() for m in self.methods}
        return allowed and re.search(self.routes, path) is not None


class Throttle(RouteFilter):
    """The next `count` matching requests get 429 (with the provider's retry headers, if it
    sends any)."""

    count: int = Field(0, ge=0)
    retry_after_s: float = Field(1.0, ge=0)


class ServerErrors(RouteFilter):
    """The next `count` matching requests get a 5xx."""

    count: int = Field(0, ge=0)
    status: Literal[500, 502, 503] = 500


class Latency(RouteFilter):
    """Matching requests are processed, then their response is held for `seconds`."""

    seconds: float = Field(0.0, ge=0)


class FaultScenario(BaseModel):
    """The knobs every emulator has; each provider's Scenario adds its own."""

    model_config = ConfigDict(extra="forbid")

    throttle: Throttle = Field(default_factory=Throttle)
    server_errors: ServerErrors = Field(default_factory=ServerErrors)
    latency: Latency = Field(default_factory=Latency)


S = TypeVar("S", bound=FaultScenario)


# --- Store ------------------------------------------------------------------------------------


class FaultStore(ABC, Generic[S]):
    """The scenario, request counters and faults handed out, behind one lock.

    A provider's store subclasses this, keeps its objects under the same lock, extends
    ``_reset`` (calling this one) and implements ``stats``.
    """

    def __init__(self, scenario: S, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._scenario = scenario.model_copy(deep=True)
        self._reset()

    def _reset(self) -> None:
        self._requests: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()

    def scenario(self) -> S:
        """A copy of the current scenario (with the remaining fault counts)."""
        with self._lock:
            return self._scenario.model_copy(deep=True)

    def replace_scenario(self, scenario: S) -> None:
        """Swap the whole scenario."""
        with self._lock:
            self._scenario = scenario.model_copy(deep=True)

    def reset(self) -> None:
        """Forget every object and counter (the scenario stays)."""
        with self._lock:
            self._reset()

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks (``fault_stats`` plus the provider's objects)."""

    def fault_stats(self) -> dict[str, Any]:
        """Requests per route and faults injected; the caller holds the lock."""
        return {"requests": dict(self._requests), "throttled": self._faults["throttled"],
                "server_errors": self._faults["server_errors"]}

    def count_request(self, route: str) -> None:
        """Count one request to `route` ("METHOD /path/{template}")."""
        with self._lock:
            self._requests[route] += 1

    def take_fault(self, method: str, path: str) -> Throttle | ServerErrors | None:
        """The fault this request must get, if any, using up one of its count."""
        with self._lock:
            for knob, name in ((self._scenario.throttle, "throttled"),
                               (self._scenario.server_errors, "server_errors")):
                if knob.count > 0 and knob.matches(method, path):
                    knob.count -= 1
                    self._faults[name] += 1
                    return knob.model_copy()
            return None

    def latency(self, method: str, path: str) -> float:
        """Seconds to hold this request's response after processing it."""
        with self._lock:
            knob = self._scenario.latency
            return knob.seconds if knob.matches(method, path) else 0.0


# --- Middleware -------------------------------------------------------------------------------


class Refusals(Protocol):
    """How a provider words the answers the middleware gives instead of the real one."""

    def request_id(self) -> str:
        """A new request id in the provider's format."""

    def missing_key(self, request_id: str) -> Response:
        """401: no bearer token."""

    def wrong_key(self, masked: str, request_id: str) -> Response:
        """401: a bearer token other than the configured one (shown masked)."""

    def throttled(self, fault: Throttle, request_id: str) -> Response:
        """429."""

    def server_error(self, status: int, request_id: str) -> Response:
        """A 5xx."""


def mask(key: str) -> str:
    """A key as an error message may show it: all but the last four characters hidden."""
    return "*" * max(0, len(key) - 4) + key[-4:] if len(key) > 8 else "*" * len(key)


def route_path(scope: Scope) -> str:
    """The request path relative to where the app is mounted."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request (handlers put it in response bodies)."""
    rid = request.scope.get("state", {}).get("request_id")
    return str(rid) if rid else secrets.token_hex(16)


class FaultMiddleware:
    """Request ids, request counters, auth, and the scenario's faults and latency for every
    request under ``api_prefix`` (a path, or paths, relative to the mount point).

    A bearer token is accepted if it is ``api_key`` (any non-empty one when None), or, when
    ``accepts`` is given, if ``accepts(token)`` says so (tokens the emulator issued).
    Paths under ``public`` (an OAuth token endpoint) get the faults but need no token.
    """

    def __init__(self, app: ASGIApp, store: FaultStore[Any], api_key: str | None,
                 routes: list[BaseRoute], api_prefix: str | tuple[str, ...],
                 refusals: Refusals, accepts: Callable[[str], bool] | None = None,
                 public: tuple[str, ...] = ()) -> None:
        self.app, self.store, self.api_key, self.routes = app, store, api_key, routes
        self.api_prefix, self.refusals, self.accepts = api_prefix, refusals, accepts
        self.public = public

    def _route(self, scope: Scope, path: str) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return f"{scope['method']} {getattr(route, 'path', path)}"
        return f"{scope['method']} {path}"

    def _refusal(self, scope: Scope, path: str, request_id: str) -> Response | None:
        """The response that replaces the real one (401, 429, 5xx), if any."""
        if not path.startswith(self.public):
            refused = self._unauthorized(scope, request_id)
            if refused is not None:
                return refused
        fault = self.store.take_fault(scope["method"], path)
        if isinstance(fault, ServerErrors):
            return self.refusals.server_error(fault.status, request_id)
        if fault is not None:
            return self.refusals.throttled(fault, request_id)
        return None

    def _unauthorized(self, scope: Scope, request_id: str) -> Response | None:
        """A 401 for a request without an accepted bearer token."""
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return self.refusals.missing_key(request_id)
        token = key.strip()
        if self.accepts is not None:
            wrong = not (token == self.api_key or self.accepts(token))
        else:
            wrong = self.api_key is not None and token != self.api_key
        return self.refusals.wrong_key(mask(token), request_id) if wrong else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.refusals.request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        method, path = scope["method"], route_path(scope)
        if not path.startswith(self.api_prefix):
            await self.app(scope, receive, send_with_id)
            return
        self.store.count_request(self._route(scope, path))
        refusal = self._refusal(scope, path, request_id)
        respond = self.app if refusal is None else refusal
        hold = self.store.latency(method, path)
        if hold <= 0:
            await respond(scope, receive, send_with_id)
            return
        # Process first, then hold: side effects happen even if the client gives up meanwhile.
        held: list[Message] = []

        async def keep(message: Message) -> None:
            held.append(message)

        await respond(scope, receive, keep)
        await anyio.sleep(hold)
        for message in held:
            await send_with_id(message)


# --- Admin routes -----------------------------------------------------------------------------


def _fault_store(request: Request) -> FaultStore[Any]:
    store: FaultStore[Any] = request.app.state.store
    return store


def admin_routes(scenario_type: type[FaultScenario]) -> list[tuple[str, str, Callable[..., Any]]]:
    """The /_emulator routes of an emulator whose scenario is ``scenario_type``."""

    def get_scenario(request: Request) -> Any:
        """The current scenario."""
        return _fault_store(request).scenario()

    def put_scenario(request: Request, scenario: Any) -> Any:
        """Replace the scenario."""
        store = _fault_store(request)
        store.replace_scenario(scenario)
        return store.scenario()

    # FastAPI validates the body against the annotation: the provider's own Scenario.
    put_scenario.__annotations__["scenario"] = scenario_type

    def reset(request: Request) -> dict[str, bool]:
        """Forget every object and counter."""
        _fault_store(request).reset()
        return {"reset": True}

    def stats(request: Request) -> dict[str, Any]:
        """Counters for tests and benchmarks."""
        return _fault_store(request).stats()

    return [
        ("GET", "/_emulator/scenario", get_scenario),
        ("PUT", "/_emulator/scenario", put_scenario),
        ("POST", "/_emulator/reset", reset),
        ("GET", "/_emulator/stats", stats),
    ]


# --- The app ----------------------------------------------------------------------------------


def emulator_app(
    title: str,
    store: FaultStore[Any],
    routes: Sequence[tuple[str, str, Callable[..., Any]]],
    handlers: Mapping[type[Exception], Callable[[Request, Exception], Any]],
    *,
    refusals: Refusals,
    api_key: str | None,
    api_prefix: str | tuple[str, ...],
    accepts: Callable[[str], bool] | None = None,
    public: tuple[str, ...] = (),
    inner: Sequence[tuple[Any, dict[str, Any]]] = (),
) -> FastAPI:
    """An emulator's ASGI app: ``routes`` (method, path, endpoint) on ``store``, the
    provider's exception ``handlers``, ``inner`` middleware, and FaultMiddleware around all."""
    app = FastAPI(title=title, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.store = store
    for method, path, endpoint in routes:
        app.add_api_route(path, endpoint, methods=[method])
    for exc, handler in handlers.items():
        app.add_exception_handler(exc, handler)
    for cls, options in inner:
        app.add_middleware(cls, **options)
    app.add_middleware(FaultMiddleware, store=store, api_key=api_key, routes=app.router.routes,
                       api_prefix=api_prefix, refusals=refusals, accepts=accepts,
                       public=public)
    return app


# --- Serving every emulator -------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatorMount:
    """One provider's emulator as ``tunectl emulator`` serves it."""

    #: The provider's display name ("OpenAI").
    title: str
    #: Where the app is mounted ("" for the root, or "/dashscope").
    prefix: str
    #: The base URL path clients use, below the mount ("/v1", "/api/v1").
    api_path: str
    app: ASGIApp


class EmulatedProvider(Protocol):
    """A provider plugin that ships an emulator (optional; see providers/base.py)."""

    def emulator(self, *, job_duration_s: float, api_key: str | None) -> EmulatorMount:
        """Its emulator app with a well-behaved scenario and this job duration."""


def installed_emulators(*, job_duration_s: float, api_key: str | None) -> list[EmulatorMount]:
    """The emulator of every installed provider plugin that has one, sorted by mount point."""
    from orchestrator.providers import registry

    mounts = []
    for name in registry.names():
        plugin: Any = registry.get(name)
        if callable(getattr(plugin, "emulator", None)):
            mounts.append(plugin.emulator(job_duration_s=job_duration_s, api_key=api_key))
    return sorted(mounts, key=lambda m: m.prefix)


def combined_app(mounts: list[EmulatorMount]) -> ASGIApp:
    """One ASGI app serving each emulator under its prefix (the root one last)."""
    roots = [m for m in mounts if not m.prefix]
    if len(roots) > 1:
        raise ValueError("only one emulator can be mounted at the root")
    routes = [Mount(m.prefix, app=m.app) for m in mounts if m.prefix]
    routes += [Mount("", app=m.app) for m in roots]
    return Starlette(routes=routes)


def serve(host: str, port: int, app: ASGIApp) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level="warning")
