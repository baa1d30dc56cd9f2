"""Time limits of one request: its body must arrive in time (408), its result too (504); and a
client that leaves before its body is complete (499, as nginx counts it: not a server error)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from app.core.errors import DetectorError


class BodyTimeout(DetectorError):
    """The body did not arrive in time (408); the connection is closed."""

    status = 408


class ClientClosedRequest(DetectorError):
    """The client closed the connection before sending its whole body (499; nobody reads it)."""

    status = 499


class DeadlineExceeded(DetectorError):
    """No result in time (504). A request still waiting in the model's queue is dropped from
    it and never runs; one running stops before its next onnxruntime call, unless it shares
    its batch with requests still waited for (``JobFuture.give_up``)."""

    status = 504


class time_limit:  # a lower-case name, as contextlib.suppress: used in `async with`
    """Cancel the block after ``seconds`` and raise ``error(seconds)`` instead of TimeoutError.

    A class rather than an ``asynccontextmanager``, whose generator cost twice as much per
    request, and the error is built only when the time is up.
    """

    __slots__ = ("_error", "_seconds", "_timeout")

    def __init__(self, seconds: float, error: Callable[[float], DetectorError]) -> None:
        self._seconds, self._error = seconds, error
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            if self._timeout.expired():
                raise self._error(self._seconds) from None
            raise


def body_timeout(seconds: float) -> BodyTimeout:
    return BodyTimeout(
        f"the body did not arrive within {seconds:g} s (SHAPE_DETECTOR_BODY_TIMEOUT_S): send it "
        "faster, or send less per request"
    )


def deadline_exceeded(seconds: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"no result within {seconds:g} s (SHAPE_DETECTOR_REQUEST_TIMEOUT_S): the service is busy or "
        "the request is large; retry later, or send fewer or shorter signals per request"
    )
