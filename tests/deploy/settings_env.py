"""Check a deployment's SHAPE_DETECTOR_* variables the way the service reads them."""

from __future__ import annotations

import os

import pytest

from app.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy.processes import ROOT


def assert_valid_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable names a setting (the service ignores unknown ones silently) and the
    service accepts the values. MODEL_DIR exists only in the image: the repository's
    models/ stands in for it."""
    unknown = sorted(k for k in env if k.removeprefix(ENV_PREFIX) not in Settings.model_fields)
    assert not unknown, f"not settings of the service: {unknown}"
    for key in os.environ:
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    load_settings(MODEL_DIR=ROOT / "models")  # raises SettingsError naming what is wrong


def assert_one_call_per_cpu(env: dict[str, str], cpu_limit: str) -> None:
    """onnxruntime as the benchmarks run it: as many calls at once as the CPU limit, one thread
    each. Two threads per call on a 2-CPU limit ran 10 % fewer requests (README, "Settings
    that matter in production")."""

    def setting(name: str) -> int:  # the deployment's value, else the service's default
        return int(env.get(ENV_PREFIX + name, Settings.model_fields[name].default))

    assert setting("INTRA_OP_THREADS") == 1, "one onnxruntime thread per call"
    assert setting("INFERENCE_WORKERS") == int(float(cpu_limit)), "an inference worker per CPU of the limit"
