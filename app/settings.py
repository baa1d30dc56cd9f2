"""Settings: one object, every field an environment variable prefixed SHAPE_DETECTOR_."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.names import meant

ENV_PREFIX = "SHAPE_DETECTOR_"
NO_LIMIT = ("REQUEST_TIMEOUT_S", "BODY_TIMEOUT_S")  # inf: no time limit
LEAST_BODY_BYTES = 1024  # MAX_BODY_BYTES's least, and so MAX_INFLIGHT_BYTES's least of all


# What a bounded setting is and why its bounds, said when a value is out of them:
# pydantic's "Input should be greater than or equal to 1024" says neither.
BOUNDED = {
    "WORKERS": "server processes, each loading every model",
    "MAX_BODY_BYTES": (
        "the largest request body, in bytes (the default, 268435456, is 256 MiB); less than 1 KiB "
        "would refuse all but the smallest requests"
    ),
    "MAX_INFLIGHT_BYTES": (
        "the bytes of request bodies one server process holds at once (the default, 1073741824, "
        "is 1 GiB), at least MAX_BODY_BYTES"
    ),
    "WINDOW": (
        "the window length for long signals, in samples, which must hold about twice each "
        "model's receptive field (what the models under MODEL_DIR need is checked at start-up)"
    ),
    "MAX_BATCH_SAMPLES": (
        "samples per onnxruntime call, which bounds its memory; fewer than 1024 would split even "
        "small requests into many calls"
    ),
    "INTRA_OP_THREADS": (
        "onnxruntime threads per call, started with each model's session (0: onnxruntime's "
        "default, one per core)"
    ),
    "INFERENCE_WORKERS": "inference threads per model, each started with its model",
    "DECODE_THREADS": "threads decoding large request bodies, started with the service",
    "GC_THRESHOLD": (
        "the garbage collector's first threshold (Python's default is 700; 0 leaves the collector "
        "as Python set it); above 10000000 it would as good as never collect"
    ),
    "SHUTDOWN_TIMEOUT_S": (
        "after SIGTERM, the longest wait for the requests in flight, in seconds; at most a day, a "
        "wait the server's timers and threads can hold"
    ),
    "SHUTDOWN_DELAY_S": (
        "after SIGTERM, the least time readiness answers 503 before the port closes, in seconds; at "
        "most a day, a wait the server's timers can hold"
    ),
    "BATCH_WAIT_MS": "the wait for more requests to batch with the first, in milliseconds",
    "SWITCH_INTERVAL_MS": "Python's thread switch interval while the service runs, in milliseconds",
    "CPU_LATENCY_US": (
        "the CPU latency to request, in µs, which the kernel takes as a 32-bit number; more than "
        "2000000000 µs (over half an hour) is as good as none (leave it unset for no request)"
    ),
}
BOUND_ERRORS = {"greater_than_equal": "below", "greater_than": "not above", "less_than_equal": "above"}


def bounds(name: str) -> str:
    """The bounds of setting ``name`` in words: "at least 1024", "at least 0 and at most 64"."""
    limits = {
        key: getattr(m, key)
        for m in Settings.model_fields[name].metadata
        for key in ("gt", "ge", "le")
        if hasattr(m, key)
    }
    words = {"gt": "above", "ge": "at least", "le": "at most"}
    return " and ".join(f"{words[key]} {shown(limit)}" for key, limit in limits.items())


def shown(limit: object) -> str:
    """A bound as a setting's message gives it: 86400, not 86400.0."""
    return f"{limit:g}" if isinstance(limit, float) else str(limit)


class SettingsError(ValueError):
    """An invalid setting; the message names the environment variable and its value."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore")

    HOST: str = Field("127.0.0.1", description="Address to listen on (python -m app).")
    PORT: int = Field(8000, ge=1, le=65535, description="Port to listen on (python -m app).")
    WORKERS: int = Field(1, ge=1, le=64, description="Server processes (python -m app).")
    MODEL_DIR: Path = Field(Path("models"), description="Directory holding one sub-directory per model.")
    DEFAULT_MODEL: str = Field("bump", description="Model used by POST /v1/detect.")
    MAX_SIGNAL_LENGTH: int = Field(
        10_000_000,
        ge=1,
        description="Longest signal accepted; a model whose min_length is above it is not loaded.",
    )
    MAX_SIGNALS: int = Field(1024, ge=1, description="Most signals in one request.")
    MAX_SAMPLES: int = Field(20_000_000, ge=1, description="Most samples in one request.")
    MAX_BODY_BYTES: int = Field(268_435_456, ge=LEAST_BODY_BYTES, description="Largest request body.")
    MAX_INFLIGHT_BYTES: int = Field(  # its least is MAX_BODY_BYTES: _holds_the_largest_body
        1_073_741_824,
        description=(
            "Most bytes of request bodies one server process holds at once: detection requests "
            "read, decoded, queued or scored; beyond, 503. At least MAX_BODY_BYTES."
        ),
    )
    WINDOW: int = Field(
        65536,
        ge=256,
        description=(
            "Window length for long signals, samples; at least what every model under MODEL_DIR "
            "needs (about twice its receptive field; checked against the cards at start-up)."
        ),
    )
    MAX_BATCH_SAMPLES: int = Field(131_072, ge=1024, description="Samples per onnxruntime call.")
    # At most 64, as the other thread counts: each is a thread started at the session's creation.
    INTRA_OP_THREADS: int = Field(1, ge=0, le=64, description="onnxruntime threads per call; 0: its default.")
    INFERENCE_WORKERS: int = Field(2, ge=1, le=64, description="onnxruntime calls run at once per model.")
    ORT_SPINNING: bool = Field(False, description="Let onnxruntime's threads spin between calls.")
    DECODE_THREADS: int = Field(2, ge=1, le=64, description="Threads decoding large request bodies.")
    MAX_QUEUE: int = Field(64, ge=1, description="Requests waiting per model before 503.")
    INLINE_MAX_SAMPLES: int = Field(
        0,
        ge=0,
        description=(
            "Opt-in: a lone request up to this many samples runs on the event loop (blocking it for "
            "that call); 0, the default: inference always runs in the worker threads."
        ),
    )
    SAME_CPU_MAX_SAMPLES: int = Field(
        0,
        ge=0,
        description=(
            "Opt-in, Linux: a lone request (nothing else in flight) up to this many samples is "
            "handed to its inference thread and back on the event loop's CPU: both threads stay "
            "pinned to that CPU while requests come one at a time, which spares two wakes across "
            "CPUs per request; any other request unpins them. 0, the default: never pin."
        ),
    )
    BATCH_WAIT_MS: float = Field(
        0.0, ge=0, le=1000, description="Wait for more requests to batch, from the first arrival."
    )
    SWITCH_INTERVAL_MS: float = Field(
        0.2,
        gt=0,
        le=100,
        description=(
            "Python's thread switch interval (sys.setswitchinterval), ms. An inference thread that "
            "finishes an onnxruntime call waits this long at most for the busy event loop to hand "
            "back the interpreter; Python's own default is 5 ms."
        ),
    )
    GC_THRESHOLD: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description=(
            "The cyclic garbage collector's first threshold while the service runs "
            "(gc.set_threshold), with everything made at start-up frozen out of its collections "
            "(gc.freeze). Python's own default is 700; 0 leaves the collector as Python set it."
        ),
    )
    CPU_LATENCY_US: int | None = Field(
        None,
        ge=0,
        le=2_000_000_000,
        description=(
            "Opt-in, Linux: hold a CPU latency QoS request of this many µs while the service runs "
            "(/dev/cpu_dma_latency, machine-wide): idle CPUs wake within it, 0 keeps them polling. "
            "Faster answers at low load, idle CPUs kept awake. Unset, the default: no request."
        ),
    )
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    OPENTELEMETRY: bool = Field(
        False,
        description=(
            "FastAPI's native OpenTelemetry (traces, metrics, logs of each request), active once an "
            "OpenTelemetry provider is configured; off: not even looked for on each request."
        ),
    )
    # Reliability and security (see the README's Operations).
    API_KEYS: SecretStr = Field(
        SecretStr(""), description="Comma-separated API keys; any key set: model routes need one."
    )
    API_KEYS_FILE: Path | None = Field(
        None, description="File of API keys, one per line (# comments); if set, it must hold a key."
    )
    PROTECT_METRICS: bool = Field(False, description="With keys set, /metrics needs a key too.")
    CORS_ORIGINS: str = Field("", description="Comma-separated origins allowed by CORS; empty: CORS off.")
    REQUEST_TIMEOUT_S: float = Field(
        60.0, gt=0, description="Detection not done this long after its body arrived: 504."
    )
    BODY_TIMEOUT_S: float = Field(60.0, gt=0, description="Body not fully received in this time: 408.")
    # At most a day: a wait the server's timers and threads can hold (inf or 1e10 cannot be).
    SHUTDOWN_TIMEOUT_S: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="After SIGTERM, longest wait for requests in flight before exiting.",
    )
    SHUTDOWN_DELAY_S: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="After SIGTERM, least time answering readiness 503 before closing the port.",
    )

    @field_validator("MODEL_DIR", "API_KEYS_FILE", mode="before")
    @classmethod
    def _not_empty(cls, value: object, info: ValidationInfo) -> object:
        """An empty path is the current directory to ``Path``: models served from wherever the
        process was started, or a keys file refused as '.'. Say it is empty instead."""
        if isinstance(value, str) and not value.strip():
            what = {"MODEL_DIR": "the models' directory", "API_KEYS_FILE": "the keys file's path"}
            raise ValueError(f"empty: give {what[str(info.field_name)]}, or leave it unset")
        return value

    @field_validator(
        "BATCH_WAIT_MS",
        "SWITCH_INTERVAL_MS",
        "REQUEST_TIMEOUT_S",
        "BODY_TIMEOUT_S",
        "SHUTDOWN_TIMEOUT_S",
        "SHUTDOWN_DELAY_S",
        mode="before",
    )
    @classmethod
    def _a_number(cls, value: object, info: ValidationInfo) -> object:
        """NaN reads as a float, then fails whichever bound is checked first ("should be greater
        than 0", "less than or equal to 1000"): say it is not a number, and what to give."""
        try:
            nan = isinstance(value, str | float) and math.isnan(float(value))
        except ValueError:
            return value  # not a float at all: pydantic says so
        if nan:
            name = str(info.field_name)
            unit = "milliseconds" if name.endswith("_MS") else "seconds"
            if name in NO_LIMIT:
                raise ValueError(f"not a number: give a number of {unit} above 0, or inf for no limit")
            raise ValueError(f"not a number: give a finite number of {unit}, {bounds(name)}")
        return value

    @field_validator("MAX_INFLIGHT_BYTES")
    @classmethod
    def _holds_the_largest_body(cls, value: int, info: ValidationInfo) -> int:
        """At least MAX_BODY_BYTES (a body that large could never be let in): a bound another
        setting gives, said with that setting's value, where a fixed ``ge`` said the least
        MAX_BODY_BYTES may be. A MAX_BODY_BYTES refused itself is not in ``info.data``: then
        only its own least is checked here."""
        body = info.data.get("MAX_BODY_BYTES")
        least = LEAST_BODY_BYTES if body is None else body
        if value >= least:
            return value
        if body is None:
            give = f"at least MAX_BODY_BYTES (itself at least {LEAST_BODY_BYTES})"
        else:
            give = (
                f"at least {shown(body)} (the value of MAX_BODY_BYTES), or lower MAX_BODY_BYTES too "
                f"(at least {LEAST_BODY_BYTES})"
            )
        raise ValueError(f"below {shown(least)}: {BOUNDED['MAX_INFLIGHT_BYTES']}; give {give}")

    @field_validator("HOST")
    @classmethod
    def _resolves(cls, host: str) -> str:
        """An address the server can listen on, as uvicorn resolves it: a typo (``127.0.0.1:8000``,
        ``999.1.1.1``) stopped the server only once the models had loaded, with uvicorn's
        "Name or service not known" naming neither the variable nor the value. Empty: every
        address, as uvicorn (asyncio) takes it."""
        if host:
            try:
                socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except (socket.gaierror, UnicodeError) as exc:
                reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
                raise ValueError(
                    f"not an address to listen on ({reason}): give an IP address of this machine "
                    "(0.0.0.0 for every IPv4 address, :: for every IPv6 address) or a host name that "
                    "resolves, without a port (that is SHAPE_DETECTOR_PORT)"
                ) from None
        return host

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.MODEL_DIR.is_dir():
            # The default, models, is the repository's: an installed package started elsewhere
            # finds nothing there, so say where a relative path was looked for.
            where = ""
            if not self.MODEL_DIR.is_absolute():
                where = f" (relative to the working directory {os.getcwd()})"
            raise ValueError(
                f"MODEL_DIR: {str(self.MODEL_DIR)!r} is not a directory{where}: set "
                "SHAPE_DETECTOR_MODEL_DIR to the directory holding the models, one sub-directory each"
            )
        from app.core.card import CARD_FILE, MODEL_FILE, model_names  # imported late: numpy

        try:
            models = model_names(self.MODEL_DIR)
        except OSError as exc:
            raise ValueError(f"MODEL_DIR: {str(self.MODEL_DIR)!r} cannot be read: {exc.strerror}") from None
        if self.DEFAULT_MODEL not in models:
            raise ValueError(
                f"DEFAULT_MODEL: {self.DEFAULT_MODEL!r} is not a model directory under "
                f"{str(self.MODEL_DIR)!r} (one holding {CARD_FILE} and {MODEL_FILE}); its models: "
                + (", ".join(models) or "none")
            )
        if self.MAX_SIGNAL_LENGTH > self.MAX_SAMPLES:
            raise ValueError(
                f"MAX_SIGNAL_LENGTH: {self.MAX_SIGNAL_LENGTH} exceeds MAX_SAMPLES "
                f"{self.MAX_SAMPLES}; raise MAX_SAMPLES or lower MAX_SIGNAL_LENGTH"
            )
        if self.SHUTDOWN_DELAY_S > self.SHUTDOWN_TIMEOUT_S:
            raise ValueError(
                f"SHUTDOWN_DELAY_S: {self.SHUTDOWN_DELAY_S:g} s exceeds SHUTDOWN_TIMEOUT_S "
                f"{self.SHUTDOWN_TIMEOUT_S:g} s, which bounds the whole shutdown (the port would close "
                "then); raise SHUTDOWN_TIMEOUT_S or lower SHUTDOWN_DELAY_S"
            )
        self._check_window(models)
        if self.CPU_LATENCY_US is not None:
            from app.cpu_latency import CpuLatencyError, CpuLatencyRequest

            try:
                CpuLatencyRequest(self.CPU_LATENCY_US).check()
            except CpuLatencyError as exc:  # said at the start, not as a traceback of the lifespan
                raise ValueError(str(exc).removeprefix(ENV_PREFIX)) from None
        if self.API_KEYS_FILE is not None and not self.API_KEYS_FILE.is_file():
            raise ValueError(f"API_KEYS_FILE: {str(self.API_KEYS_FILE)!r} is not a file")
        from app.security import check_origins, load_api_keys  # imported late: it imports Starlette

        load_api_keys(self)  # raises ValueError naming the bad key's position, never the key
        check_origins(self.CORS_ORIGINS)
        return self

    def _check_window(self, models: list[str]) -> None:
        """WINDOW holds every model's receptive field (``least_window``), read from the cards:
        a model that cannot run in the window would never load, and /readyz stay 503. A card
        that does not read is left to the model's load, which reports it (the others serve)."""
        from app.core.card import CardError, load_card  # imported late: numpy
        from app.core.windows import least_window

        needs: dict[str, int] = {}
        for name in models:
            try:
                card = load_card(self.MODEL_DIR / name, verify=False)
            except CardError:
                continue
            needs[name] = least_window(card.receptive_radius, card.alignment)
        least = max(needs.values(), default=0)
        if least > self.WINDOW:
            short = ", ".join(f"{name} needs {value}" for name, value in needs.items() if value > self.WINDOW)
            raise ValueError(
                f"WINDOW: {self.WINDOW} samples is too short for the models under "
                f"{str(self.MODEL_DIR)!r}: set at least {least} ({short}; a model needs about "
                "twice its receptive field)"
            )


def misspelt(environ: Mapping[str, str]) -> list[str]:
    """The ``SHAPE_DETECTOR_*`` variables of ``environ`` that look like a misspelt setting
    (``SHAPE_DETECTOR_API_KEY``), each with the setting meant, when that setting is not given
    too. Ignored, such a variable leaves its setting at the default: with ``API_KEYS`` that
    is every route open. Other unknown ones (Kubernetes' service links,
    ``SHAPE_DETECTOR_SERVICE_HOST``) are left alone. Names only: a value may be a key."""
    ours = sorted(key for key in environ if key.upper().startswith(ENV_PREFIX))
    given = {key[len(ENV_PREFIX) :].upper() for key in ours}  # read whatever their case
    found = []
    for key in ours:
        name = key[len(ENV_PREFIX) :].upper()
        if name in Settings.model_fields:
            continue
        if near := meant(name, Settings.model_fields, given):
            found.append(f"{key} is not a setting; name it {ENV_PREFIX}{near} (as spelt, it is ignored)")
    return found


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides``); raises ``SettingsError`` if invalid,
    or if a variable looks like a misspelt setting (``misspelt``)."""
    lines = misspelt(os.environ)
    settings = None
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            if field:
                value = err.get("input")
                if field in BOUNDED and err["type"] in BOUND_ERRORS:
                    (limit,) = err.get("ctx", {}).values()
                    msg = (
                        f"{BOUND_ERRORS[err['type']]} {shown(limit)}: {BOUNDED[field]}; give {bounds(field)}"
                    )
                if field == "PORT" and isinstance(value, str) and value.startswith("tcp://"):
                    msg += (
                        "; tcp://... is a Kubernetes service link for a Service named shape-detector: "
                        "set enableServiceLinks: false in the pod's spec, or give SHAPE_DETECTOR_PORT"
                    )
                lines.append(f"{ENV_PREFIX}{field.upper()}={value!r}: {msg}")
            else:
                lines.append(f"{ENV_PREFIX}{msg}")
    if settings is None or lines:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines))
    return settings


@lru_cache
def get_settings() -> Settings:
    return load_settings()
