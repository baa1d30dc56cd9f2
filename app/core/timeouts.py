"""Time limits of one request: its body must arrive in time (408), its result too (504); and a
client that leaves before its body is complete (499, as nginx counts it: not a server error)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.errors import DetectorError


class BodyTimeout(DetectorError):
    """The body did not arrive in time (408); the connection is closed."""

    status = 408


class ClientClosedRequest(DetectorError):
    """The client closed the connection before sending its whole body (499; nobody reads it)."""

    status = 499


class DeadlineExceeded(DetectorError):
    """No result in time (504). Work already running finishes in the background; a request
    still waiting in the model's queue is dropped from it and never runs."""

    status = 504


@asynccontextmanager
async def time_limit(seconds: float, error: DetectorError) -> AsyncIterator[None]:
    """Cancel the block after ``seconds`` and raise ``error`` instead of TimeoutError."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if timeout.expired():
            raise error from None
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
