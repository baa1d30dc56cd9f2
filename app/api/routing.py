"""A route class for the hot path: routes whose dependencies read only the request.

FastAPI solves a route's dependencies anew on every request. For /v1/detect (one dependency
that reads only the request, ``detect_call``, and a string path parameter) that took 56 µs of
the event loop per request (median, in process), more than the rest of FastAPI's routing: it
also builds a response object and parses the query string, the headers and the cookies.

A ``RequestOnlyRoute`` calls the same dependency functions with the request, and the endpoint
with their results. FastAPI still routes the request, handles its errors and documents the
route (its OpenAPI entry is unchanged). A route it cannot call that way is served by FastAPI's
own handler, exactly as an ``APIRoute``: one whose endpoint is not an ``async def`` annotated
to return a ``Response``, one with query, header, cookie or body parameters or a path
parameter other than a plain ``str``, a plain ``def`` or generator dependency, nested
dependencies, or a dependency added by an including router. So are all requests while
``app.dependency_overrides`` holds anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.responses import Response
from fastapi.routing import APIRoute

try:  # FastAPI >= 0.137 builds an included route's handler for the including router's context
    from fastapi.routing import _effective_route_context_var as _context_var
except ImportError:  # earlier versions copy the route when a router is included
    _context_var = None  # type: ignore[assignment]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
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
        calls = direct_calls(dependant)
        if calls is None:
            return solved_by_fastapi
        endpoint = dependant.call
        assert endpoint is not None  # checked by direct_calls
        path_names = [p.name for p in dependant.path_params]
        request_name = dependant.request_param_name
        route = self.path

        async def handle(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await solved_by_fastapi(request)
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
