"""The access log: one line per request, made at the end of the loop's iteration, in order,
each with the time its request ended; nothing pending after shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.observability import AccessLog, JsonFormatter
from app.settings import load_settings
from tests.api.conftest import wait_ready


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.access")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, stream
    log.handlers[:] = []


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_of_one_iteration_are_written_together_in_order(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    access = AccessLog(log)
    seen: list[int] = []

    async def main() -> None:
        access.add({"n": 1})
        await asyncio.sleep(0.002)  # a later iteration: the first line is written by then
        seen.append(len(lines(stream)))
        access.add({"n": 2})
        access.add({"n": 3})
        seen.append(len(lines(stream)))  # not yet: the end of this iteration
        await asyncio.sleep(0)
        seen.append(len(lines(stream)))

    asyncio.run(main())
    assert seen == [1, 1, 3]
    docs = lines(stream)
    assert [d["n"] for d in docs] == [1, 2, 3]
    assert all(d["message"] == "request" and d["logger"] == "test.access" for d in docs)


def test_a_record_keeps_the_time_its_request_ended(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, _ = logger
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log.addHandler(Keep())
    access = AccessLog(log)

    async def main() -> float:
        ended = time.time()
        access.add({"n": 1})
        time.sleep(0.05)  # the loop is busy before the line is made
        return ended

    ended = asyncio.run(main())
    (record,) = records
    assert abs(record.created - ended) < 0.02
    assert record.msecs == int((record.created - int(record.created)) * 1000)


def test_without_a_loop_or_below_info(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    access = AccessLog(log)
    access.add({"n": 1})  # no running loop: written at once
    assert [d["n"] for d in lines(stream)] == [1]
    log.setLevel(logging.WARNING)
    access.add({"n": 2})
    access.flush()
    assert [d["n"] for d in lines(stream)] == [1]


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
