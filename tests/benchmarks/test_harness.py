"""The harness end to end on a tiny configuration: a well-formed result dict and report files.

A couple of seconds of load on the service and the naive server; no assertion on any timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.card import load_card
from app.cpu_latency import DEVICE
from benchmarks import report, servers, wrkload
from benchmarks.loadgen import check_response, oip_payload
from benchmarks.run import Config, main, measure, run_server, service_names, side_by_side, workloads

pytestmark = pytest.mark.slow

NUMBERS = ("requests_per_s", "samples_per_s", "p50_ms", "p99_ms", "server_peak_rss_mib", "client_cpu_cores")


def tiny_config() -> Config:
    return Config(
        servers=("service", "naive", "floor"),
        shapes=((1, 1024),),
        concurrency=(1, 4),
        warmup_s=0.1,
        duration_s=0.3,
        repeats=2,
        big_length=100_000,  # longer than the service's window: exercises its windowing
        big_repeats=1,
        raw_duration_s=0.01,
        raw_repeats=2,
        raw_long_length=100_000,
        latency_calls=20,
        budget_s=600.0,
        side_by_side_rounds=2,
        client="wrk" if wrkload.executable() else "python",
    )


def test_workloads_cover_bodies_shapes_and_concurrency() -> None:
    cfg = Config()
    assert len(workloads(cfg, "service")) == 2 * 2 * 3 + 2
    assert workloads(cfg, "service")[-2:] == [("oip", 1, 1024, 1), ("oip", 1, 1024, 32)]  # /v2
    assert not any(w[0] == "oip" for w in workloads(cfg, "naive") + workloads(Config(oip=False), "service"))
    assert workloads(cfg, "floor") == [("json", 1, 1024, 1)]
    assert workloads(Config(concurrency=(8, 32)), "floor") == []
    assert ("json", 1, 1024, 32) in workloads(Config(litserve_all=False), "litserve")
    assert workloads(cfg, "service-w2") == [("json", 1, 1024, 32), ("npy", 1, 1024, 32)]
    assert workloads(cfg, "service-lat0") == [("json", 1, 1024, 1), ("json", 1, 1024, 32)]
    assert workloads(cfg, "service-samecpu") == [("json", 1, 1024, 1)]
    assert workloads(Config(concurrency=(8, 32)), "service-samecpu") == []


def test_side_by_side_past_the_budget_runs_one_short_round(tmp_path: Path) -> None:
    cfg = replace(tiny_config(), servers=("service",), concurrency=(1, 2), budget_s=0.0)
    result: dict[str, Any] = {"failures": []}
    side_by_side(cfg, None, tmp_path, time.perf_counter() - 1.0, result)
    sbs = result["side_by_side"]
    assert result["failures"] == [] and sbs["reduced"] and len(sbs["rounds"]) == 1
    assert sbs["servers"] == ["service"] and sbs["rounds"][0]["service-c1"]["errors"] == 0
    assert sbs["rounds"][0]["service-samecpu-c1"]["errors"] == 0
    assert "Reduced: past the time budget" in "\n".join(report.side_by_side_lines(result))


def test_side_by_side_rounds_without_a_correct_answer_are_reported_as_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that answers every request 404 (the floor server, posted to on a path it lacks):
    # with the Python client its phases have no latency; the run goes on and reports them.
    monkeypatch.setattr(
        "benchmarks.run.spec_for",
        lambda name, cfg, port: replace(servers.floor_spec(port), name=name, detect_path="/missing"),
    )
    cfg = replace(
        tiny_config(), servers=("service",), side_by_side_rounds=1, same_cpu_max_samples=None, client="python"
    )
    result: dict[str, Any] = {"failures": [], "rows": [], "ratios": [], "servers": {}}
    side_by_side(cfg, None, tmp_path, time.perf_counter(), result)
    assert [f.split(":")[0] for f in result["failures"]] == [
        "side by side, service round 1",
        "side by side, service-c1 round 1",
    ]
    assert "HTTP 404" in result["failures"][0]
    (round_,) = result["side_by_side"]["rounds"]
    assert round_["service-c1"]["p50_ms"] is None and round_["service"]["errors"] > 0
    result["raw"] = {"latency_1x1024": round_["raw"]}
    lines = "\n".join(report.side_by_side_lines(result))
    assert "| 1 | 0.0 | – | – | – | – | – |" in lines  # no latency: shown as unknown
    (target,) = [
        t for t in report.targets(result) if t["workload"].startswith("1×1024 json, concurrency 1, side")
    ]
    assert target["met"] is None and target["value"] is None


def test_the_cpu_latency_run_is_listed_as_not_run_where_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = Config(servers=("service", "naive"))
    result: dict[str, list[str]] = {"not_run": []}
    monkeypatch.setattr("benchmarks.run.os.access", lambda path, mode: False)
    assert service_names(cfg, result) == ["service", "service-w2", "service-samecpu", "naive"]
    assert result["not_run"] == [f"service-lat0: {DEVICE} is not writable here (it needs root on Linux)"]
    monkeypatch.setattr("benchmarks.run.os.access", lambda path, mode: True)
    assert service_names(cfg, {"not_run": []}) == [
        "service",
        "service-w2",
        "service-samecpu",
        "service-lat0",
        "naive",
    ]
    assert service_names(
        Config(servers=("service",), cpu_latency_us=None, same_cpu_max_samples=None), {"not_run": []}
    ) == [
        "service",
        "service-w2",
    ]


def test_tiny_run_gives_a_well_formed_result(tmp_path: Path) -> None:
    result = measure(tiny_config(), log_dir=tmp_path / "logs")
    result["command"] = "python -m benchmarks.run (test)"
    examples = [e for r in result["rows"] for e in r.get("error_examples", [])]
    assert result["failures"] == [] and result["errors"] == 0, examples

    assert {"cpu", "cores", "python", "versions"} <= set(result["machine"])
    assert {"onnxruntime", "numpy"} <= set(result["machine"]["versions"])
    raw = result["raw"]
    assert {"1x1024", "64x1024", "1x100000", "latency_1x1024"} <= set(raw)
    assert raw["1x100000"]["calls_per_pass"] >= 2  # the service's windows, not one call
    for case in ("1x1024", "64x1024", "1x100000"):  # one caller, and one per CPU sharing the session
        c = raw[case]
        assert len(c["repeats_parallel"]) == 2 and c["samples_per_s_parallel"] > 0
        assert c["best_samples_per_s"] == max(c["samples_per_s"], c["samples_per_s_parallel"])
    assert raw["callers"] == len(os.sched_getaffinity(0))

    rows = {(r["server"], r["body"], r["rows"], r["length"], r["concurrency"]): r for r in result["rows"]}
    for conc in (1, 4):
        assert rows[("naive", "npy", 1, 1024, conc)]["status"] == "n/a"
        for server, body in (("service", "json"), ("service", "npy"), ("naive", "json")):
            row = rows[(server, body, 1, 1024, conc)]
            assert row["status"] == "ok" and row["errors"] == 0 and row["requests"] >= conc
            assert len(row["repeats"]) == 2
            assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in NUMBERS)
    for conc in (1, 4):  # /v2, the Open Inference Protocol: every answer checked as wrk's (identical)
        oip = rows[("service", "oip", 1, 1024, conc)]
        assert oip["status"] == "ok" and oip["errors"] == 0 and oip["identical_responses"] >= conc
    big = rows[("service", "npy", 1, 100_000, 1)]
    assert big["requests"] == 1 and len(big["latencies_ms"]) == 1 and "peak_rss_growth_mib" in big
    latency_run = os.access(DEVICE, os.W_OK)  # root on Linux: the service holding a CPU latency request
    assert set(result["servers"]) == {"service", "service-w2", "service-samecpu", "naive", "floor"} | (
        {"service-lat0"} if latency_run else set()
    )
    assert bool(result["not_run"]) != latency_run
    floor = rows[("floor", "json", 1, 1024, 1)]  # the concurrency-1 workload only
    assert floor["status"] == "ok" and floor["errors"] == 0 and floor["requests"] >= 1
    assert [k for k in rows if k[0] == "floor"] == [("floor", "json", 1, 1024, 1)]
    assert result["servers"]["floor"]["exit_code"] == 0
    paced = raw["latency_1x1024_paced"]
    assert paced["calls"] == 20 and paced["pause_ms"] > 0 and math.isfinite(paced["p50_ms"])
    assert result["wakeups"]["same_cpu_round_trip_us"] > 0
    assert result["servers"]["service"]["exit_code"] == 0  # the service exits 0 on SIGTERM
    assert result["servers"]["service-w2"]["settings"]["WORKERS"] == 2
    w2 = rows[("service-w2", "json", 1, 1024, 4)]
    assert w2["status"] == "ok" and w2["errors"] == 0 and w2["server_processes"] >= 3  # parent + 2
    assert ("service-w2", "json", 1, 1024, 1) not in rows  # the highest concurrency only
    assert result["servers"]["service-samecpu"]["settings"]["SAME_CPU_MAX_SAMPLES"] == 16384
    assert result["servers"]["service"]["settings"]["SAME_CPU_MAX_SAMPLES"] == 0  # the default: off
    assert [k for k in rows if k[0] == "service-samecpu"] == [("service-samecpu", "json", 1, 1024, 1)]
    assert rows[("service-samecpu", "json", 1, 1024, 1)]["errors"] == 0
    if latency_run:
        lat = result["servers"]["service-lat0"]
        assert lat["settings"]["CPU_LATENCY_US"] == 0 and lat["exit_code"] == 0
        assert lat["cpu_latency_limit_us"] == 0  # the kernel held the service's request
        assert lat["raw"]["latency_1x1024"]["calls"] == 20  # the raw call timed while it held it
        assert [k[4] for k in rows if k[0] == "service-lat0"] == [1, 4]
        assert all(rows[("service-lat0", "json", 1, 1024, c)]["errors"] == 0 for c in (1, 4))

    ratios = {
        (q["body"], q["length"], q["concurrency"]): q for q in result["ratios"] if q["server"] == "service"
    }
    assert ratios[("json", 1024, 4)]["service_over_naive"] is not None
    assert ratios[("npy", 1024, 4)]["service_over_naive"] is None  # the naive server takes JSON only
    assert ratios[("npy", 100_000, 1)]["raw_case"] == "1x100000"
    npy = ratios[("npy", 100_000, 1)]  # against the better raw, and against one caller
    service_rate = rows[("service", "npy", 1, 100_000, 1)]["samples_per_s"]
    assert npy["service_over_raw"] == pytest.approx(service_rate / raw["1x100000"]["best_samples_per_s"])
    assert npy["service_over_raw_one_caller"] == pytest.approx(
        service_rate / raw["1x100000"]["samples_per_s"]
    )

    sbs = result["side_by_side"]  # alternating rounds: the service and naive (no LitServe here)
    assert sbs["servers"] == ["service", "naive"] and sbs["concurrency"] == 4 and len(sbs["rounds"]) == 2
    for r in sbs["rounds"]:
        assert set(r) == {"service", "naive", "service-c1", "service-samecpu-c1", "raw"}
        assert r["service"]["errors"] == r["naive"]["errors"] == r["service-c1"]["errors"] == 0
        assert r["service-samecpu-c1"]["errors"] == 0
        assert r["service"]["requests_per_s"] > 0 and r["raw"]["calls"] == 20
    summary = report.side_by_side_summary(result)
    assert summary is not None and summary["rounds"] == 2 and summary["over_litserve"] is None
    rows_over_naive = [x["over_naive"] for x in report.side_by_side_rounds(result)]
    assert summary["over_naive"] == pytest.approx(sum(rows_over_naive) / 2)  # the median of two

    paths = report.write(result, tmp_path, "smoke")
    assert json.loads(paths[0].read_text())["errors"] == 0
    text = paths[1].read_text()
    assert "| service | npy | 1×1,024 | 4 |" in text and "## Ratios" in text and "## Targets" in text
    assert "| naive | npy | 1×1,024 | 1 | n/a" in text
    assert "## Concurrency 1: what this machine charges" in text and "| floor: uvicorn" in text
    assert "the HTTP floor alone" in text  # in the concurrency-1 target's row
    assert "## Side by side: alternating rounds" in text and "| median |" in text
    assert "| 1×1024 json, concurrency 4, side by side, median of 2 rounds |" in text
    assert "| 1×1024 json, concurrency 1, side by side, median of 2 rounds |" in text
    assert "| same-CPU c1 p50 ms | service − same-CPU ms |" in text
    assert "| 1×1024 json, concurrency 1 (service-samecpu: SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES=16384" in text
    assert "concurrency 4 (service-samecpu)" not in text  # measured at concurrency 1 only
    if latency_run:
        assert "| 1×1024 json, concurrency 1 (service-lat0: a CPU latency request of 0 µs" in text
        assert "| service-lat0, concurrency 1 |" in text
        assert "concurrency 32 (service-lat0)" not in text  # no target row against servers holding none
    else:
        assert "## Not run" in text


def test_the_targets_against_raw_are_judged_on_the_better_raw() -> None:
    """Raw onnxruntime with one caller uses one core where the service's inference workers use
    every core: judged against it, a service at 1.5x of one core passed targets it misses against
    what raw onnxruntime does on the whole machine."""
    case = {"samples_per_s": 5e6, "samples_per_s_parallel": 9e6, "best_samples_per_s": 9e6}
    result: dict[str, Any] = {
        "raw": {
            "1x1024": case, "64x1024": case, "long_case": "1x1000000", "window": 65536,
            "latency_1x1024": {"p50_ms": 0.25},
        },
        "rows": [
            {"server": "service", "body": body, "rows": 64, "length": 1024, "concurrency": 8, "status": "ok",
             "samples_per_s": rate, "requests_per_s": rate / 65536}
            for body, rate in (("npy", 8.1e6), ("json", 7.2e6))
        ],
        "servers": {},
    }  # fmt: skip
    result["ratios"] = report.ratios(result)
    npy = next(q for q in result["ratios"] if q["body"] == "npy")
    assert npy["service_over_raw"] == pytest.approx(0.9) and npy[
        "service_over_raw_one_caller"
    ] == pytest.approx(1.62)
    met = {t["workload"]: t["met"] for t in report.targets(result)}
    assert met["64×1024 npy, concurrency 8"] is False  # 0.90 < 0.95, though 1.62x one caller
    assert met["64×1024 json, concurrency 8"] is False  # 0.80 < 0.85


def test_every_response_is_checked() -> None:
    ok = b'{"results": [{"peaks": []}, {"peaks": [{"index": 3, "probability": 0.9}]}]}'
    assert check_response(200, ok, 2) is None
    assert "1 results for 2 signals" in str(check_response(200, b'{"results": [{"peaks": []}]}', 2))
    assert "HTTP 503" in str(check_response(503, ok, 2))
    assert "not JSON" in str(check_response(200, b"<html>", 2))
    assert "'peaks'" in str(check_response(200, b'{"results": [{}, {}]}', 2))


def test_every_oip_response_is_checked() -> None:
    outputs = [
        {"name": "probability", "datatype": "FP32", "shape": [2], "data": [0.1, 0.9]},
        {"name": "detected", "datatype": "BOOL", "shape": [2], "data": [False, True]},
        *({"name": n, "datatype": "INT64", "shape": [1], "data": [0]} for n in ("peak_signal", "peak_index")),
        {"name": "peak_probability", "datatype": "FP32", "shape": [1], "data": [0.9]},
    ]
    ok = json.dumps({"model_name": "bump", "outputs": outputs}).encode()
    assert check_response(200, ok, 2, "oip") is None
    assert "shape [2] for 3 signals" in str(check_response(200, ok, 3, "oip"))
    assert "'peak_index'" in str(check_response(200, ok.replace(b"peak_index", b"other"), 2, "oip"))
    assert "no 'outputs'" in str(check_response(200, b"{}", 2, "oip"))
    payload = oip_payload(np.zeros((2, 3), dtype=np.float32), "bump")
    assert payload.path == "/v2/models/bump/infer" and payload.needle == ('"probability"', 1)
    assert json.loads(payload.body)["inputs"][0]["shape"] == [2, 3]


def test_an_answer_other_than_the_models_is_an_error() -> None:
    want = {
        "model": {"name": "bump", "version": "1"},
        "threshold": 0.5,
        "min_distance": 40,
        "results": [
            {"probability": 0.1, "detected": False, "peaks": []},
            {"probability": 0.9, "detected": True, "peaks": [{"index": 300, "probability": 0.9}]},
        ],
    }
    body = json.dumps(want).encode()
    assert check_response(200, body, 2, expected=want) is None
    moved = body.replace(b'"index": 300', b'"index": 301')
    assert check_response(200, moved, 2) is None  # the contract alone does not see it
    problem = str(check_response(200, moved, 2, expected=want))
    assert "signal 1" in problem and "peaks at [301]" in problem and "peaks at [300]" in problem
    lower = body.replace(b'"probability": 0.9}', b'"probability": 0.8}')
    assert "signal 1" in str(check_response(200, lower, 2, expected=want))
    other = body.replace(b'"version": "1"', b'"version": "2"')
    assert "not the one measured (bump 1)" in str(check_response(200, other, 2, expected=want))
    outputs = [  # the same answer in the Open Inference Protocol
        {"name": "probability", "datatype": "FP32", "shape": [2], "data": [0.1, 0.9]},
        {"name": "detected", "datatype": "BOOL", "shape": [2], "data": [False, True]},
        {"name": "peak_signal", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "peak_index", "datatype": "INT64", "shape": [1], "data": [300]},
        {"name": "peak_probability", "datatype": "FP32", "shape": [1], "data": [0.9]},
    ]
    oip = {"model_name": "bump", "model_version": "1", "outputs": outputs}
    assert check_response(200, json.dumps(oip).encode(), 2, "oip", want) is None
    outputs[2]["data"] = [0]  # the peak given to the other signal
    assert "signal 0" in str(check_response(200, json.dumps(oip).encode(), 2, "oip", want))


def test_a_server_answering_fast_but_wrongly_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The floor server answers every request with the contract's shape and no work: one signal,
    # no peak. Run in place of the service, its answers are not the model's.
    monkeypatch.setattr(
        "benchmarks.run.spec_for", lambda name, cfg, port: replace(servers.floor_spec(port), name=name)
    )
    cfg = replace(tiny_config(), servers=("service",), concurrency=(1,), repeats=1, big_length=0, oip=False)
    result: dict[str, Any] = {"servers": {}, "rows": [], "failures": [], "not_run": []}
    template = load_card(cfg.model_dir).template
    run_server("service", cfg, list(template) if template else None, tmp_path, time.perf_counter(), result)
    (row,) = [r for r in result["rows"] if r["status"] == "ok"]
    assert row["requests"] > 0 and row["errors"] > 0  # answered, fast, and counted as wrong
    assert any("not the one measured (bump" in e for e in row["error_examples"]), row["error_examples"]


def test_the_report_names_uncommitted_changes_to_what_it_measured(tmp_path: Path) -> None:
    # A checkout of the repository's layout: the service, a reference server, the results, docs.
    files = ("app/main.py", "benchmarks/naive_server.py", "benchmarks/results/latest.md", "README.md")
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("committed\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    assert report.machine(tmp_path)["uncommitted"] == []
    for name in files:  # every file edited, and a new one beside the harness
        (tmp_path / name).write_text("edited\n")
    (tmp_path / "benchmarks" / "litserve_server.py").write_text("new\n")
    m = report.machine(tmp_path)
    assert m["git_commit"] and sorted(m["uncommitted"]) == [
        "app/main.py",
        "benchmarks/litserve_server.py",
        "benchmarks/naive_server.py",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats: '0': give a whole number of at least 1"),
        (["--duration", "0"], "--duration: '0': give a number of seconds above 0"),
        (["--duration", "-1"], "--duration: '-1': give a number of seconds above 0"),
        (["--budget", "soon"], "--budget: 'soon': give a number of seconds 0 or more"),
        (["--workers", "0"], "--workers: '0': give a whole number of at least 1"),
        (
            ["--more-workers", "2,x"],
            "--more-workers: '2,x': give whole numbers of at least 1, separated by commas",
        ),
        (["--intra-op-threads", "-1"], "--intra-op-threads: '-1': give a whole number of at least 0"),
        (["--cpu-latency", "off"], "--cpu-latency: 'off': give a whole number of at least 0 ('' for none)"),
        (["--same-cpu", "-1"], "--same-cpu: '-1': give a whole number of at least 0 ('' for none)"),
        (["--model-dir", "models"], "--model-dir: models/card.json: no model card"),
    ],
)
def test_a_command_line_that_cannot_measure_is_refused_before_the_run(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run with no measured repeat, or a setting no server takes, would report nothing (or fail
    # minutes in): it is refused at once, saying what to give instead.
    def measured(cfg: Config, log_dir: Path | None = None) -> dict[str, Any]:
        raise AssertionError(f"the run started with {args}")

    monkeypatch.setattr("benchmarks.run.measure", measured)
    monkeypatch.chdir(servers.ROOT)
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--client", "python"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_command_line_sets_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Config] = []

    def measured(cfg: Config, log_dir: Path | None = None) -> dict[str, Any]:
        runs.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr("benchmarks.run.measure", measured)
    for args in ([], ["--more-workers", "2,4", "--cpu-latency", "", "--same-cpu", "", "--repeats", "2"]):
        with pytest.raises(SystemExit):
            main([*args, "--client", "python"])
    default, chosen = runs
    assert (default.more_workers, default.cpu_latency_us, default.same_cpu_max_samples) == ((2,), 0, 16384)
    assert (default.repeats, default.workers, default.intra_op_threads) == (3, 1, 1)
    assert (chosen.more_workers, chosen.cpu_latency_us, chosen.same_cpu_max_samples) == ((2, 4), None, None)
    assert chosen.repeats == 2


def test_a_server_that_does_not_start_is_an_error(tmp_path: Path) -> None:
    spec = servers.ServerSpec("broken", [sys.executable, "-c", "raise SystemExit(3)"], {}, "/", "/", False)
    with pytest.raises(servers.ServerError, match="exited with 3"):
        servers.start(spec, servers.free_port(), tmp_path)
