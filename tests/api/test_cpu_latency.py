"""The opt-in CPU latency request (SHAPE_DETECTOR_CPU_LATENCY_US): what it writes, when it holds
it, and what a refused request tells the operator. The kernel's own device is used where this
process may write it (root on Linux); a regular file stands in for it otherwise."""

import os
import struct
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import app.cpu_latency as cpu_latency
import app.main as main
from app.cpu_latency import DEVICE, CpuLatencyError, CpuLatencyRequest, current_limit
from app.lifecycle import Lifecycle
from app.main import create_app
from app.settings import SettingsError, load_settings
from tests.api.conftest import wait_ready

needs_device = pytest.mark.skipif(
    not os.access(DEVICE, os.W_OK), reason=f"{DEVICE} is not writable here (Linux, root)"
)


def test_the_request_is_a_32_bit_value_written_once_and_closed(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    request = CpuLatencyRequest(12, device)
    assert not request.held
    with request:
        assert request.held
        assert struct.unpack("=i", device.read_bytes()) == (12,)
        request.open()  # already held: nothing written again
        assert device.read_bytes() == struct.pack("=i", 12)
    assert not request.held
    request.close()  # closing twice is harmless


def test_a_refused_request_says_why_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-device"
    with pytest.raises(CpuLatencyError) as info:
        CpuLatencyRequest(0, missing).open()
    message = str(info.value)
    assert "SHAPE_DETECTOR_CPU_LATENCY_US=0" in message and str(missing) in message
    assert "--device /dev/cpu_dma_latency" in message and "unset" in message
    with pytest.raises(ValueError, match=">= 0"):
        CpuLatencyRequest(-1)


@needs_device
def test_the_kernel_holds_the_request_until_it_is_closed() -> None:
    before = current_limit()
    with CpuLatencyRequest(3):
        assert current_limit() <= 3
    assert current_limit() == before


@needs_device
def test_the_service_holds_its_request_while_it_runs(models_dir: Path) -> None:
    before = current_limit()
    app = create_app(load_settings(MODEL_DIR=models_dir, CPU_LATENCY_US=4))
    with TestClient(app) as client:
        wait_ready(client)
        assert current_limit() <= 4
        assert client.get("/healthz").status_code == 200
    assert current_limit() == before


def test_a_request_that_would_be_refused_stops_the_start_at_the_settings(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the settings' other errors, before anything runs (``python -m app`` exits 2 with the
    message): it was refused in the lifespan, a traceback in uvicorn's log after a line saying
    the service had shut down."""
    missing = tmp_path / "no-such-device"
    monkeypatch.setattr(cpu_latency, "DEVICE", missing)
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=models_dir, CPU_LATENCY_US=0)
    assert f"SHAPE_DETECTOR_CPU_LATENCY_US=0: cannot open {missing} (No such file or directory)" in str(
        err.value
    )
    assert "--device /dev/cpu_dma_latency" in str(err.value)


def test_the_check_holds_no_request(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    CpuLatencyRequest(5, device).check()
    assert device.read_bytes() == b""  # nothing written: no latency asked for


def test_the_service_does_not_start_when_its_request_is_refused(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device gone between the settings' check and the start: the lifespan's refusal."""
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    monkeypatch.setattr(cpu_latency, "DEVICE", device)
    app = create_app(load_settings(MODEL_DIR=models_dir, CPU_LATENCY_US=0))
    device.unlink()
    with pytest.raises(CpuLatencyError, match="cannot open"), TestClient(app):
        pass


def test_a_start_that_fails_half_way_leaves_nothing_behind(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start fails after the request is held and the models' loader has started: the
    request is let go, the loader and batcher threads stop and the switch interval is back,
    as at a normal stop."""
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    monkeypatch.setattr(cpu_latency, "DEVICE", device)
    made: list[CpuLatencyRequest] = []

    class Recorded(CpuLatencyRequest):
        def open(self) -> None:
            made.append(self)
            super().open()

    def refuse(self: Lifecycle) -> None:
        raise RuntimeError("no signal handler here")

    monkeypatch.setattr(main, "CpuLatencyRequest", Recorded)
    monkeypatch.setattr(Lifecycle, "install_signal_handler", refuse)
    interval, threads = sys.getswitchinterval(), set(threading.enumerate())
    with (
        pytest.raises(RuntimeError, match="no signal handler"),
        TestClient(create_app(load_settings(MODEL_DIR=models_dir, CPU_LATENCY_US=0))),
    ):
        pass
    assert len(made) == 1 and not made[0].held  # it was made (written), then let go
    assert struct.unpack("=i", device.read_bytes()) == (0,)
    assert [t.name for t in set(threading.enumerate()) - threads] == []  # loader and batchers stopped
    assert sys.getswitchinterval() == interval


def test_no_request_by_default(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    monkeypatch.setattr(cpu_latency, "DEVICE", device)
    settings = load_settings(MODEL_DIR=models_dir)
    assert settings.CPU_LATENCY_US is None
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
    assert device.read_bytes() == b""
