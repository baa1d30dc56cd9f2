"""The access log: one line per request, written by a thread of its own, in order, each with
the time its request ended; nothing pending after shutdown."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.observability import IDLE_INTERVALS, AccessLog, JsonFormatter, _direct_handler
from app.settings import load_settings
from tests.api.conftest import wait_ready


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.access")
    log.handlers[:] = [handler]
    log.filters[:] = []
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, stream
    log.handlers[:] = []
    log.filters[:] = []


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_writer_thread_writes_the_lines_in_order(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    access = AccessLog(log, interval=0.01)
    for n in range(1, 4):
        access.add({"n": n})
    deadline = time.monotonic() + 10  # written by the thread, not by close()
    while len(lines(stream)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    written = lines(stream)
    access.close()
    assert [d["n"] for d in written] == [1, 2, 3]
    assert all(d["message"] == "request" and d["logger"] == "test.access" for d in written)


def test_close_writes_what_is_pending(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    access = AccessLog(log, interval=3600)  # the thread would not write for an hour
    for n in range(1, 4):
        access.add({"n": n})
    assert lines(stream) == []
    access.close()
    assert [d["n"] for d in lines(stream)] == [1, 2, 3]


def test_after_close_a_new_writer_starts(logger: tuple[logging.Logger, io.StringIO]) -> None:
    """An app's lifespan may run more than once: each run gets its lines written."""
    log, stream = logger
    access = AccessLog(log, interval=0.01)
    access.add({"n": 1})
    access.close()
    access.add({"n": 2})
    deadline = time.monotonic() + 10  # written by the new thread, not by close()
    while len(lines(stream)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [d["n"] for d in lines(stream)] == [1, 2]
    access.close()


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_an_idle_writer_sleeps_until_the_next_line(logger: tuple[logging.Logger, io.StringIO]) -> None:
    """With nothing to write for IDLE_INTERVALS intervals the thread stops waking every interval;
    the next line wakes it and is written by it, and close() stops it while it sleeps."""
    log, stream = logger
    access = AccessLog(log, interval=0.005)
    access.add({"n": 1})
    assert wait_for(lambda: len(lines(stream)) == 1)
    writer = access._writer
    assert writer is not None
    waits = 0
    stop_wait = access._stop.wait

    def counted(timeout: float | None = None) -> bool:
        nonlocal waits
        waits += 1
        return stop_wait(timeout)

    access._stop.wait = counted  # type: ignore[method-assign]
    assert wait_for(lambda: access._asleep)
    asleep_after = waits
    time.sleep(IDLE_INTERVALS * 0.005 * 4)  # four times as long as it took to fall asleep
    assert waits == asleep_after  # no wake-up while asleep
    access.add({"n": 2})
    assert wait_for(lambda: len(lines(stream)) == 2)  # written by the woken thread, not by close()
    assert access._writer is writer
    assert wait_for(lambda: access._asleep)  # and asleep again
    closing = threading.Thread(target=access.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive() and not writer.is_alive()
    assert [d["n"] for d in lines(stream)] == [1, 2]
    access.add({"n": 3})  # a new lifespan: a new writer, awake
    assert wait_for(lambda: len(lines(stream)) == 3)
    access.close()


def test_a_record_keeps_the_time_its_request_ended(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, _ = logger
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log.addHandler(Keep())
    access = AccessLog(log, interval=3600)
    ended = time.time()
    access.add({"n": 1})
    time.sleep(0.05)  # the line is made later
    access.close()
    (record,) = records
    assert abs(record.created - ended) < 0.02
    assert record.msecs == int((record.created - int(record.created)) * 1000)


def test_below_info_nothing_is_kept(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.setLevel(logging.WARNING)
    access = AccessLog(log)
    access.add({"n": 1})
    access.close()
    assert lines(stream) == [] and access._writer is None


@pytest.mark.parametrize("left_pending", [False, True])
def test_every_request_gets_its_line_in_order(
    models_dir: Path, left_pending: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``left_pending``: no line is written while the app runs; shutdown writes them all."""
    if left_pending:
        monkeypatch.setattr(
            AccessLog, "add", lambda self, fields: self._pending.append((time.time(), fields))
        )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("shape_detector.access")
    app = create_app(load_settings(MODEL_DIR=models_dir))
    access.addHandler(handler)
    try:
        with TestClient(app) as client:
            wait_ready(client)
            ids = [f"req-{i}" for i in range(20)]
            for rid in ids:
                assert client.get("/healthz", headers={"X-Request-ID": rid}).status_code == 200
            if left_pending:
                assert not [d for d in lines(stream) if d.get("request_id") in ids]
        written = [d.get("request_id") for d in lines(stream)]
    finally:
        access.removeHandler(handler)
    assert [w for w in written if w in ids] == ids


def test_a_log_line_is_json_whatever_its_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m %s", ("arg",), None)
    record.fields = {"big": 2**70, "path": Path("/tmp"), "n": 1.5}  # type: ignore[attr-defined]
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["message"], doc["big"], doc["path"], doc["n"]) == ("m arg", 2**70, "/tmp", 1.5)


def test_lines_written_directly_equal_the_logging_modules(logger: tuple[logging.Logger, io.StringIO]) -> None:
    """With the service's set-up (one StreamHandler, JsonFormatter, no filter) the lines go to the
    stream in one write; any other set-up takes the logging module's path. Same lines either way."""
    log, stream = logger
    log.handlers[:] = log.handlers[:1]  # the fixture's handler alone (pytest adds its own)
    fields = [{"n": n, "path": f"/v1/{n}", "big": 2**70 if n == 2 else n} for n in range(3)]

    def written(access: AccessLog) -> str:
        stream.seek(0)
        stream.truncate()
        for f in fields:
            access.add(dict(f))
        access._pending = type(access._pending)(
            (1_700_000_000.25 + i, f) for i, (_, f) in enumerate(access._pending)
        )
        access.close()
        return stream.getvalue()

    assert _direct_handler(log) is not None
    direct = written(AccessLog(log, interval=3600))
    log.addFilter(lambda record: True)  # a filter: the logging module's path
    assert _direct_handler(log) is None
    assert written(AccessLog(log, interval=3600)) == direct
    assert [d["n"] for d in lines(stream)] == [0, 1, 2] and lines(stream)[2]["big"] == 2**70
    assert lines(stream)[0]["time"] == "2023-11-14T22:13:20.250Z"


def test_the_direct_path_only_for_the_services_set_up(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, _ = logger
    handler = log.handlers[0]
    log.handlers[:] = [handler]  # the fixture's handler alone (pytest adds its own)
    assert _direct_handler(log) == (handler, handler.formatter)
    handler.setLevel(logging.WARNING)
    assert _direct_handler(log) is None
    handler.setLevel(logging.NOTSET)
    log.addHandler(logging.NullHandler())  # two handlers
    assert _direct_handler(log) is None
    log.handlers[:] = [handler]
    handler.setFormatter(logging.Formatter())
    assert _direct_handler(log) is None
