"""The hot path's routing: routes whose dependencies read only the request, served early.

FastAPI solves a route's dependencies anew on every request. For /v1/detect (one dependency
that reads only the request, ``detect_call``, and a string path parameter) that took 56 µs of
the event loop per request (median, in process), more than the rest of FastAPI's routing: it
also builds a response object and parses the query string, the headers and the cookies.

A ``RequestOnlyRoute`` calls the same dependency functions with the request, and the endpoint
with their results. FastAPI still documents the route (its OpenAPI entry is unchanged). A route
it cannot call that way is served by FastAPI's own handler, exactly as an ``APIRoute``: one
whose endpoint is not an ``async def`` annotated to return a ``Response``, one with query,
header, cookie or body parameters or a path parameter other than a plain ``str``, a plain
``def`` or generator dependency, nested dependencies, or a dependency added by an including
router. So are all requests while ``app.dependency_overrides`` holds anything.

``DirectRoutes``, a middleware, goes one step further for the routes at the head of the app's
own route list: it calls their direct handlers itself, before FastAPI's router and the layers
around it (see the class). The requests it leaves to FastAPI pass two more layers, which the
hot path does not: ``HeadAsGet`` (HEAD wherever GET is served) and ``ServerErrors`` (an
unexpected error answered 500 inside the app's middleware, as ``DirectRoutes`` answers its own).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from functools import cached_property
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:  # FastAPI >= 0.137 builds an included route's handler for the including router's context
    from fastapi.routing import _effective_route_context_var as _context_var
except ImportError:  # earlier versions copy the route when a router is included
    _context_var = None  # type: ignore[assignment]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Unexpected = Callable[[Request, Exception], Coroutine[Any, Any, Response]]  # logs, answers 500
TELEMETRY = "fastapi.telemetry"  # the scope key of a request FastAPI's telemetry observes
Call = tuple[str, Callable[..., Any], str | None]  # parameter name, function, its Request parameter


def _reads_only_the_request(dependant: Dependant) -> bool:
    """Nothing FastAPI would parse or validate, and no special parameter but the Request."""
    return not (
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    )


def direct_calls(dependant: Dependant) -> list[Call] | None:
    """The endpoint's dependencies as direct calls, or None if FastAPI must solve them."""
    if dependant.call is None or not inspect.iscoroutinefunction(dependant.call):
        return None
    returns = get_typed_return_annotation(dependant.call)
    if not (inspect.isclass(returns) and issubclass(returns, Response)):
        return None  # FastAPI serialises anything else
    if not _reads_only_the_request(dependant):
        return None
    if any(p.field_info.annotation is not str or p.alias != p.name for p in dependant.path_params):
        return None
    calls: list[Call] = []
    for dep in dependant.dependencies:
        if (
            dep.name is None  # a router's dependency, run for its effect
            or dep.call is None
            or not inspect.iscoroutinefunction(dep.call)  # a plain def or a generator
            or dep.dependencies
            or dep.path_params
            or not _reads_only_the_request(dep)
        ):
            return None
        calls.append((dep.name, dep.call, dep.request_param_name))
    return calls


def direct_handler(dependant: Dependant, route: str) -> Handler | None:
    """The route's dependencies and endpoint called directly with the request; None if FastAPI
    must solve them (see ``direct_calls``)."""
    calls = direct_calls(dependant)
    if calls is None:
        return None
    endpoint = dependant.call
    assert endpoint is not None  # checked by direct_calls
    path_names = [p.name for p in dependant.path_params]
    request_name = dependant.request_param_name

    async def handle(request: Request) -> Response:
        values: dict[str, Any] = {name: request.path_params[name] for name in path_names}
        if request_name is not None:
            values[request_name] = request
        for name, call, takes_request in calls:
            values[name] = await (call(**{takes_request: request}) if takes_request else call())
        response = await endpoint(**values)
        if not isinstance(response, Response):  # it is annotated to return one
            raise TypeError(f"{route} returned {type(response).__name__}, not a Response")
        return response

    return handle


class RequestOnlyRoute(APIRoute):
    """An ``APIRoute`` whose dependencies are called directly when they read only the request
    (see the module's docstring)."""

    def get_route_handler(self) -> Handler:
        solved_by_fastapi: Handler = super().get_route_handler()
        # The dependant FastAPI's handler solves: with the including routers' dependencies.
        context = _context_var.get() if _context_var is not None else None
        dependant: Dependant = self.dependant
        if context is not None and context.original_route is self:
            dependant = context.dependant
        direct = direct_handler(dependant, self.path)
        if direct is None:
            return solved_by_fastapi

        async def handle(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await solved_by_fastapi(request)
            return await direct(request)

        return handle

    @cached_property
    def direct(self) -> Handler | None:
        """The handler ``DirectRoutes`` calls for this route (the route as it stands in its
        app's own list, without an including router's context); None if FastAPI must serve it."""
        return direct_handler(self.dependant, self.path)


def add_leading_routes(
    app: FastAPI,
    routes: Sequence[tuple[str, Callable[..., Any], str]],
    route_class: type[RequestOnlyRoute],
    **options: Any,
) -> None:
    """POST routes ``(path, endpoint, summary)`` on the app's own router, to be among its
    leading ``RequestOnlyRoute`` routes (add them before any other route): ``DirectRoutes``
    serves them. Routes on the app's own router also take ``app.dependency_overrides``, as
    routes of an included router do. ``options``: FastAPI's, for each route."""
    for path, endpoint, summary in routes:
        app.router.add_api_route(
            path, endpoint, methods=["POST"], summary=summary, route_class_override=route_class, **options
        )


class DirectRoutes:
    """ASGI middleware, the innermost of the app's own: serves the requests of the app's leading
    ``RequestOnlyRoute`` routes itself, with their direct handlers.

    Between the app's own middleware and a route, FastAPI runs its exception middleware, an
    exit-stack middleware, its router (which tries every route in turn) and the route's
    request-response wrapper, with two more exit stacks and a second exception wrapper. On
    /v1/detect that cost more than a fifth of one process's throughput at concurrency 32.

    Here a request is matched as FastAPI's router matches it, with each route's own
    ``matches``, against the app's routes up to its last ``RequestOnlyRoute`` that can be
    called directly: the first route that fully matches wins, as in the router. If it is one of
    those routes, its handler is called here and its errors go to the app's exception handlers
    (as FastAPI's exception middleware would send them). An error without a handler, or
    ``Exception``'s, goes to ``unexpected`` when one is given, as ``ServerErrors`` sends
    FastAPI's, so the 500 passes the app's other middleware (their headers) and the connection
    stays open; without it, on to Starlette's server-error middleware, as FastAPI would. Every
    other request goes on to FastAPI unchanged, and so does every request while
    ``app.dependency_overrides`` holds anything.

    A request that FastAPI's telemetry observes (``SHAPE_DETECTOR_OPENTELEMETRY`` on and an
    OpenTelemetry provider configured) goes to FastAPI too: its router names the route in the
    request's span and metrics (``http.route``) and traces the dependencies and the endpoint.
    Not done for these routes: a router's form limits (they take no form data). The routes are
    read at the first request.
    """

    def __init__(self, app: ASGIApp, owner: FastAPI, unexpected: Unexpected | None = None) -> None:
        self.app = app
        self.owner = owner
        self.unexpected = unexpected
        self._routes: list[tuple[BaseRoute, Handler | None]] | None = None

    def _leading_routes(self) -> list[tuple[BaseRoute, Handler | None]]:
        routes: list[tuple[BaseRoute, Handler | None]] = [
            (r, r.direct if isinstance(r, RequestOnlyRoute) else None) for r in self.owner.router.routes
        ]
        last = max((i for i, (_, direct) in enumerate(routes) if direct is not None), default=-1)
        return routes[: last + 1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.owner.dependency_overrides or scope.get(TELEMETRY) is not None:
            await self.app(scope, receive, send)
            return
        routes = self._routes
        if routes is None:
            routes = self._routes = self._leading_routes()
        for route, handler in routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                if handler is None:
                    break
                scope.setdefault("router", self.owner.router)
                scope.update(child_scope)
                await self._serve(handler, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:
            on_error: Callable[..., Any] | None = self._exception_handler(exc) or self.unexpected
            if on_error is None:
                raise
            if inspect.iscoroutinefunction(on_error):
                response = await on_error(request, exc)
            else:
                response = await run_in_threadpool(on_error, request, exc)
        await response(scope, receive, send)

    def _exception_handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The handler FastAPI's exception middleware would call for ``exc``, if any."""
        handlers = self.owner.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code != 500 and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls is Exception:  # Exception's handler is the server-error middleware's
                return None
            if cls in handlers:
                return handlers[cls]
        return None


class HeadAsGet:
    """ASGI middleware: a HEAD request is served as the GET of the same URL, wherever GET is.

    Starlette's routes take HEAD wherever they take GET, FastAPI's do not (its ``APIRoute``
    never adds HEAD to its methods: fastapi/fastapi#1773), so every GET route answered HEAD
    with 405. The route sees GET; the server, whose scope still says HEAD, sends the response's
    status and headers (``Content-Length`` included: the GET's) without its body, as it does
    for Starlette's routes. A route that does not take GET answers HEAD as it answers GET.
    Nothing changes in the OpenAPI document (HEAD is implied by GET)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        as_get = {**scope, "method": "GET"}  # a copy: the server's own scope keeps HEAD
        try:
            await self.app(as_get, receive, send)
        finally:
            for key in ("route", "endpoint"):  # for the layers outside: the metrics name the route
                if key in as_get:
                    scope[key] = as_get[key]


class ServerErrors:
    """ASGI middleware, inside the app's others: an unexpected error (an exception FastAPI has
    no handler for) is answered by ``unexpected`` here, not by Starlette's server-error
    middleware outside every layer.

    There the 500 lacked what the other layers add to every response (the security headers,
    CORS, ``Connection: close`` while draining), and the error went on to the server, which
    closed the keep-alive connection after the answer without saying so: a client that reused
    it got a reset. Here the answer passes those layers and the connection stays usable.

    If the response had started but not finished, nothing can be answered: the error goes on,
    and the server closes the connection (the only way to tell the client the body is cut). If
    it had finished, the error is still handed to ``unexpected`` (which logs it), its answer
    dropped."""

    def __init__(self, app: ASGIApp, unexpected: Unexpected) -> None:
        self.app = app
        self.unexpected = unexpected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def watch(message: Message) -> None:
            nonlocal started, finished
            await send(message)  # first: a send that fails (the client gone) has sent nothing
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started and not finished:
                raise
            response = await self.unexpected(Request(scope, receive, send), exc)
            if not started:
                await response(scope, receive, send)
