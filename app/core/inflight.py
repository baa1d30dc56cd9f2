"""The bytes of request bodies one server process holds at once (``MAX_INFLIGHT_BYTES``).

``MAX_QUEUE`` counts requests, but a request may be a few KiB or ``MAX_BODY_BYTES``: a queue
of large ones held far more memory than a queue of small ones. This bound counts their bytes.
A detection request holds its body's bytes as they arrive until its answer is made, through
decoding, the queue and inference, which together hold a few times the body at most. A request
whose Content-Length could not fit now is answered 503 with ``Retry-After`` before its body is
read; one whose bytes, as they arrive, would take the sum past the bound, as soon as they do.
Bytes a client only claims are not held: a few clients that claim the largest body and send it
slowly hold what they sent, not the bound (they held it all, and every request got 503).

Used on the event loop alone, which reads bodies and makes answers: no lock.
"""

from __future__ import annotations

from app.core.errors import Overloaded


class InFlightBytes:
    """Bytes of the bodies of the detection requests in flight (read, decoded, queued or
    scored), at most ``most``; ``most`` is at least the largest body, so a request alone is
    always let in."""

    def __init__(self, most: int) -> None:
        if most < 1:
            raise ValueError("most must be >= 1")
        self.most = most
        self.held = 0

    def hold(self) -> Held:
        """A holding of no bytes yet; ``Held.grow`` adds a request's bytes as they are known."""
        return Held(self)

    def _fits(self, size: int) -> None:
        """Raise ``Overloaded`` if ``size`` more bytes would pass the bound."""
        if self.held + size > self.most:
            raise Overloaded(
                f"{self.held} bytes of request bodies are in flight and this request's {size} more "
                f"would pass the limit of {self.most} (SHAPE_DETECTOR_MAX_INFLIGHT_BYTES); retry "
                "shortly, or send smaller requests"
            )


class Held:
    """One request's bytes of an ``InFlightBytes``; ``release`` (or leaving the ``with``
    block) gives them all back, once."""

    def __init__(self, bound: InFlightBytes) -> None:
        self._bound: InFlightBytes | None = bound
        self.size = 0

    def fits(self, size: int) -> None:
        """Raise ``Overloaded`` if ``size`` more bytes would not fit now (holding none)."""
        self._live()._fits(size)

    def grow(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise ``Overloaded`` (holding none of them)."""
        bound = self._live()
        bound._fits(size)
        bound.held += size
        self.size += size

    def _live(self) -> InFlightBytes:
        if self._bound is None:
            raise RuntimeError("released")
        return self._bound

    def release(self) -> None:
        bound, self._bound = self._bound, None
        if bound is not None:
            bound.held -= self.size

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
