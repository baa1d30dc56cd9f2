"""Domain errors. The API maps each to one HTTP status in one exception handler."""

from __future__ import annotations


def listed(names: set[str] | list[str], most: int = 5) -> str:
    """Names for a message: sorted, at most ``most`` of them (a body may hold any number)."""
    ordered = sorted(names)
    shown = ", ".join(repr(name[:40]) for name in ordered[:most])
    return f"[{shown}]" if len(ordered) <= most else f"[{shown}, … {len(ordered) - most} more]"


class DetectorError(Exception):
    """Base class: ``detail`` is safe to show to the client and says how to fix the call."""

    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MalformedBody(DetectorError):
    """The body cannot be parsed as its content type (400)."""

    status = 400


class ModelNotFound(DetectorError):
    status = 404


class BodyTooLarge(DetectorError):
    status = 413


class UnsupportedMediaType(DetectorError):
    status = 415


class ModelNotReady(DetectorError):
    """The model exists but is loading or failed to load (503)."""

    status = 503


class Overloaded(DetectorError):
    """The model's queue is full: come back shortly (503 with Retry-After)."""

    status = 503


class ShuttingDown(Overloaded):
    """The service is stopping: nothing new is queued or swapped in (503)."""


class InvalidInput(DetectorError):
    """The body parsed but its content is unusable (422); ``loc`` points at the culprit."""

    status = 422

    def __init__(
        self, detail: str, loc: tuple[str | int, ...] = ("body",), kind: str = "value_error"
    ) -> None:
        super().__init__(detail)
        self.loc = loc
        self.kind = kind
