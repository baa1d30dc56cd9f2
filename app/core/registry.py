"""Every model under the model directory, loaded once, verified, warmed up, with its status.

A model that fails to load or verify is not served; its status says why and the other
models still serve.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.core.batching import Admission, Batcher, Finish, JobFuture
from app.core.card import model_names
from app.core.errors import ModelNotFound, ModelNotReady, ShuttingDown
from app.core.model import InferenceOptions, OnnxModel
from app.core.windows import Float32Array

log = logging.getLogger("shape_detector.models")


@dataclass
class ModelStatus:
    name: str
    state: str = "loading"  # loading | ready | failed
    reason: str | None = None
    model: OnnxModel | None = None
    batcher: Batcher | None = None


class Registry:
    def __init__(
        self,
        model_dir: Path,
        options: InferenceOptions,
        *,
        max_queue: int = 64,
        max_wait: float = 0.0,
        workers: int = 1,
    ) -> None:
        self.model_dir = model_dir
        self.options = options
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.workers = workers
        self._lock = threading.Lock()
        self._closed = False
        self.statuses: dict[str, ModelStatus] = {name: ModelStatus(name) for name in model_names(model_dir)}

    def load_all(self) -> None:
        """Load, verify and warm up every model; never raises for one bad model. Stops at the
        next model once the registry is closed."""
        ort.disable_telemetry_events()  # nothing leaves the process or lands on disk for it
        for name, status in self.statuses.items():
            if self._closed:
                return
            try:
                model = OnnxModel(self.model_dir / name, self.options)
                model.warm_up()
            except Exception as exc:  # a bad model must not stop the others
                with self._lock:
                    status.state, status.reason = "failed", self.redact_paths(f"{type(exc).__name__}: {exc}")
                log.error("model %s not served: %s", name, status.reason)
                continue
            try:
                self.swap(name, model, self.new_batcher(name, model))
            except ShuttingDown:
                return
            log.info("model %s %s ready", name, model.version)

    def new_batcher(self, name: str, model: OnnxModel) -> Batcher:
        def score(signals: Sequence[npt.NDArray[np.floating]]) -> list[Float32Array]:
            # The batches of one big request are spread over idle workers.
            return model.scores(signals, map_batches=batcher.map)

        batcher = Batcher(
            score,
            max_batch_samples=self.options.max_batch_samples,
            max_queue=self.max_queue,
            max_wait=self.max_wait,
            workers=self.workers,
            name=name,
        )
        return batcher

    def swap(self, name: str, model: OnnxModel, batcher: Batcher) -> Batcher | None:
        """Serve ``name`` with ``model`` and ``batcher`` from now on, atomically for ``submit``;
        returns the batcher replaced (the caller closes it: it finishes its queue first).

        Once the registry is closed nothing is swapped in: ``batcher`` is closed here and
        ``ShuttingDown`` raised."""
        with self._lock:
            closed = self._closed
            if not closed:
                status = self.statuses[name]
                old = status.batcher
                status.state, status.model, status.batcher, status.reason = "ready", model, batcher, None
        if closed:
            batcher.close()
            raise ShuttingDown("the service is shutting down; retry on another instance")
        return old

    def failed(self, name: str, reason: str) -> None:
        """A reload of ``name`` failed for ``reason``: if no version serves it, that is now why
        (readiness shows the latest failure); a version that serves keeps serving, ready."""
        with self._lock:
            status = self.statuses[name]
            if status.model is None and status.state == "failed":
                status.reason = reason

    @property
    def closed(self) -> bool:
        """``close`` was called: no model is swapped in any more."""
        return self._closed

    def redact_paths(self, text: str) -> str:
        """A reason fit for a response: the model directory's absolute path becomes MODEL_DIR,
        and the real path of each model's directory (a symbolic link to one elsewhere, whose
        files onnxruntime names by their real path) ``MODEL_DIR/<name>``."""
        shown = {str(self.model_dir.resolve()): "MODEL_DIR", str(self.model_dir): "MODEL_DIR"}
        for name in self.statuses:
            shown.setdefault(str((self.model_dir / name).resolve()), f"MODEL_DIR/{name}")
        for prefix in sorted(shown, key=len, reverse=True):
            if prefix.rstrip("/"):  # not "/": every path would be garbled
                text = text.replace(prefix.rstrip("/") + "/", shown[prefix] + "/")
        return text

    @property
    def ready(self) -> bool:
        return bool(self.statuses) and all(s.state == "ready" for s in self.statuses.values())

    def problems(self) -> list[str]:
        if not self.statuses:
            return ["no models under MODEL_DIR"]
        return [
            f"{s.name}: {s.state}" + (f" ({s.reason})" if s.reason else "")
            for s in self.statuses.values()
            if s.state != "ready"
        ]

    def models(self) -> list[OnnxModel]:
        return [s.model for s in self.statuses.values() if s.model is not None]

    def close(self) -> None:
        """Let every batcher finish its queue, then stop; no model is swapped in after this."""
        with self._lock:
            self._closed = True
        for status in self.statuses.values():
            if status.batcher is not None:
                status.batcher.close()

    def submit(
        self,
        name: str,
        model: OnnxModel,
        signals: Sequence[npt.NDArray[np.floating]],
        finish: Finish,
        waiter: asyncio.Future[Any] | None = None,
    ) -> JobFuture | None:
        """Queue for ``name``'s batcher if ``model`` still serves it; None if it was swapped."""
        with self._lock:
            status = self.statuses[name]
            if status.model is not model or status.batcher is None:
                return None
            return status.batcher.submit(signals, finish, waiter)

    def run_now(
        self, name: str, model: OnnxModel, signals: Sequence[npt.NDArray[np.floating]], finish: Finish
    ) -> tuple[bool, Any]:
        """``Batcher.run_now`` on ``name``'s batcher if ``model`` still serves it, else ``(False, None)``."""
        batcher = self._batcher(name, model)
        if batcher is None:
            return False, None
        return batcher.run_now(signals, finish)

    def idle_worker(self, name: str, model: OnnxModel) -> int | None:
        """The native thread id of the worker that would take a request for ``name`` now, if
        ``model`` still serves it and every worker of its batcher is idle; else None."""
        batcher = self._batcher(name, model)
        return batcher.first_worker if batcher is not None and batcher.idle else None

    def _batcher(self, name: str, model: OnnxModel) -> Batcher | None:
        """``name``'s batcher if ``model`` still serves it, else None."""
        with self._lock:
            status = self.statuses[name]
            return status.batcher if status.model is model else None

    def admit(self, name: str) -> Admission:
        """``Batcher.admit`` on ``name``'s batcher: a full queue answers 503 before the
        request's body is read (and held) at all, and a request let in holds its place while
        its body is read. Without a batcher (the model not loaded): an admission of nothing."""
        status = self.statuses.get(name)
        batcher = status.batcher if status is not None else None
        return batcher.admit() if batcher is not None else Admission(None)

    def status(self, name: str) -> ModelStatus:
        """``name``'s status, loaded or not; 404 for a name no model has."""
        status = self.statuses.get(name)
        if status is None:
            known = ", ".join(self.statuses) or "none"
            raise ModelNotFound(f"no model named {name!r}; available models: {known}")
        return status

    def get(self, name: str) -> OnnxModel:
        """The model serving ``name``; 404 for a name no model has, 503 while it loads or if it
        failed to load."""
        status = self.status(name)
        if status.model is None:
            if status.state == "loading":
                raise ModelNotReady(f"model {name!r} is still loading; retry in a few seconds")
            raise ModelNotReady(f"model {name!r} is not available: {status.reason}")
        return status.model
