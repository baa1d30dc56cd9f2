"""Hot reload: serve a new version of a model from its directory without a restart.

``reload_model`` loads ``MODEL_DIR/<name>/`` again: the card is validated, the model file read
once and the sha256 of those bytes checked against it (``card.read_model``), the session is
created from the same bytes and warmed up (the largest batch too) while the old version keeps
serving. Only then are model and batcher swapped, in one step under the registry's lock, so
every request is decoded, queued and answered by one version, and its response names that
version. The old batcher finishes the requests already in its queue and stops; once the old
version is freed the heap is trimmed (``heap.trim``), so the process does not grow with
reloads. A model that fails to load or verify is not swapped
in: the old version keeps serving and the error says why. One reload at a time per registry:
another is refused (409), except a SIGHUP's, which waits for the running one to end. Once the
service is shutting down nothing is swapped in (503). With one server process, SIGHUP reloads
every model (``reload_on_sighup``); a SIGHUP during such a reload runs it once more when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from app.core import heap
from app.core.batching import Batcher
from app.core.errors import DetectorError, ModelNotFound, ShuttingDown
from app.core.model import OnnxModel
from app.core.registry import Registry

log = logging.getLogger("shape_detector.models")
_locks: weakref.WeakKeyDictionary[Registry, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


class ReloadConflict(DetectorError):
    """Another reload runs, or the models are still loading (409)."""

    status = 409


class ReloadFailed(DetectorError):
    """The files on disk do not load or verify; the old version keeps serving (422)."""

    status = 422


@dataclass(frozen=True, slots=True)
class Reloaded:
    name: str
    version: str
    previous_version: str | None
    sha256: str
    seconds: float


RELEASE_WAIT_S = 120.0  # the longest a retired version waits for requests that still hold it


def _retire(retiring: list[Batcher], released: threading.Event) -> None:
    """Off the event loop: let the old version's batcher finish its queue and stop, wait until
    its model is freed, then give the freed heap back to the operating system (``heap.trim``).

    The C library keeps what a freed onnxruntime session and its warm-up used, in holes among
    what is still in use: without the trim the process grew with every reload. The model is
    freed here, as the batcher goes, unless a request still holds it (its answer being made):
    then by that request, which sets ``released``; after ``RELEASE_WAIT_S`` the heap is trimmed
    whatever holds it."""
    batcher = retiring.pop()
    batcher.close()
    del batcher
    released.wait(RELEASE_WAIT_S)
    heap.trim()


def _lock_for(registry: Registry) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(registry, threading.Lock())


WAIT_POLL_S = 0.1  # how often a reload waiting for another one looks whether the service stops


def _never() -> bool:
    return False


def _take_turn(lock: threading.Lock, registry: Registry, name: str, stop: Callable[[], bool] | None) -> None:
    """Hold ``lock``, the registry's one reload at a time. While another reload holds it: with
    ``stop`` None, ReloadConflict; else wait for that reload to end, unless the service stops
    meanwhile (``stop()`` true, or the registry closed): then ShuttingDown."""
    if lock.acquire(blocking=False):
        return
    if stop is None:
        raise ReloadConflict("another model reload is running; retry when it has finished")
    log.info("model %s: another model reload is running; reloading once it has ended", name)
    while not lock.acquire(timeout=WAIT_POLL_S):
        if stop() or registry.closed:
            raise ShuttingDown("the service is shutting down (it was waiting for another reload to end)")


def reload_model(registry: Registry, name: str, *, stop: Callable[[], bool] | None = None) -> Reloaded:
    """Load, verify, warm up and swap in ``MODEL_DIR/<name>/`` (blocking: call it in a thread).

    While another reload runs: without ``stop``, ReloadConflict (an HTTP reload: 409); with it,
    wait for that reload to end, unless ``stop()`` becomes true or the registry closes."""
    status = registry.statuses.get(name)
    if status is None:
        known = ", ".join(registry.statuses) or "none"
        raise ModelNotFound(
            f"no model named {name!r}; available models: {known} (models are found at start-up: "
            "restart the service to serve a model added since)"
        )
    if registry.closed:
        raise ShuttingDown("the service is shutting down; retry on another instance")
    if status.state == "loading":
        raise ReloadConflict(
            f"model {name!r} is still loading; retry once /readyz shows it ready or failed "
            "(/readyz answers 200 only when every model is ready)"
        )
    lock = _lock_for(registry)
    _take_turn(lock, registry, name, stop)
    try:
        started = time.perf_counter()
        serving = status.model
        previous = serving.version if serving is not None else None
        try:
            model = OnnxModel(registry.model_dir / name, registry.options)
            model.warm_up()
        except Exception as exc:
            reason = registry.redact_paths(f"{type(exc).__name__}: {exc}")
            log.error("model %s not reloaded: %s", name, reason)
            registry.failed(name, reason)
            keeps = f"version {previous} keeps serving" if previous else "the model stays unavailable"
            raise ReloadFailed(f"model {name!r} was not reloaded ({keeps}): {reason}") from None
        try:
            old = registry.swap(name, model, registry.new_batcher(name, model))
        except ShuttingDown:
            log.warning("model %s not reloaded: the service is shutting down", name)
            raise
        if old is not None:  # finishes the requests queued for the old version, then stops
            released = threading.Event()
            if serving is None:  # never: a batcher goes with the model it served
                released.set()
            else:
                weakref.finalize(serving, released.set).atexit = False
            retiring = [old]
            del old, serving  # the thread holds the old version; it is freed as that finishes
            threading.Thread(
                target=_retire, args=(retiring, released), name=f"drain-{name}-{previous}", daemon=True
            ).start()
        seconds = time.perf_counter() - started
        log.info("model %s reloaded: %s -> %s in %.2f s", name, previous, model.version, seconds)
        return Reloaded(name, model.version, previous, model.card.sha256, seconds)
    finally:
        lock.release()


def reload_all(registry: Registry, stop: Callable[[], bool] = _never) -> list[str]:
    """``reload_model`` of every model, one after the other (blocking: call it in a thread); a
    model that cannot be reloaded is logged and keeps what it serves, the others go on. A
    reload that is running (one asked for over HTTP) is waited for, not skipped: the files may
    have changed since it read them. Once ``stop()`` is true or the registry is closed, the
    wait ends and no further model is reloaded. The names of the models reloaded."""
    done: list[str] = []
    names = list(registry.statuses)
    for i, name in enumerate(names):
        if stop() or registry.closed:
            log.warning("models %s not reloaded: the service is shutting down", ", ".join(names[i:]))
            break
        try:
            reload_model(registry, name, stop=stop)
        except DetectorError as exc:  # still loading, another reload, the files refused, shutting down
            log.warning("model %s not reloaded: %s", name, exc)
        except Exception:
            log.exception("model %s not reloaded", name)
        else:
            done.append(name)
    return done


def reload_on_sighup(registry: Registry, draining: Callable[[], bool]) -> Callable[[], None] | None:
    """With one server process, SIGHUP loads every model anew (``reload_all``), as uvicorn
    answers it with several: it replaces each worker with one that loads the models. Without a
    handler SIGHUP ended the process at once, the requests in flight with it (the signal a
    closing terminal sends, and the one the README gives for reloading several workers). A
    SIGHUP while a reload from one runs asks for one more, run when it ends: the files may have
    changed since that reload read them. Any number of them asks for one more reload, not a pile
    of them. A reload asked for over HTTP that runs meanwhile is waited for (``reload_all``).
    Once ``draining``, a SIGHUP is logged and does nothing, and a reload waiting stops waiting.

    Installed from the event loop's thread, if it is the main one (a signal handler must be),
    unless SIGHUP is ignored (``nohup``): returns what restores the handler there was, or None
    if nothing was installed."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return None
    previous = signal.getsignal(signal.SIGHUP)
    if previous is signal.SIG_IGN:  # started under nohup: a closing terminal must change nothing
        return None
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[list[str]]] = set()
    again = False  # a SIGHUP came while a reload ran: one more once it ends
    stopped = False  # the handler is restored: the service stops, nothing more is started

    def reload(why: str) -> None:
        log.info(why)
        task = loop.create_task(asyncio.to_thread(reload_all, registry, lambda: stopped or draining()))
        running.add(task)
        task.add_done_callback(ended)

    def ended(task: asyncio.Task[list[str]]) -> None:
        nonlocal again
        running.discard(task)
        if not again or stopped:
            return
        again = False
        if draining():
            log.warning("SIGHUP during the reload: the service is shutting down; the models are not reloaded")
        else:
            reload("SIGHUP during the reload: loading every model anew once more")

    def start() -> None:
        nonlocal again
        if draining() or stopped:
            log.warning("SIGHUP: the service is shutting down; the models are not reloaded")
        elif running:
            again = True
            log.warning(
                "SIGHUP: the models are being reloaded already; they are loaded anew once more when it ends"
            )
        else:
            reload("SIGHUP: loading every model anew")

    def on_sighup(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(start)

    signal.signal(signal.SIGHUP, on_sighup)

    def restore() -> None:
        nonlocal stopped
        stopped = True
        if signal.getsignal(signal.SIGHUP) is on_sighup:
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)

    return restore
