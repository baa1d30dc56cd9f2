"""Shared fixtures: a tiny exported ONNX model, built in seconds with the training code."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from training.export import export_onnx, make_card, save_card
from training.model import ModelConfig, build_model, measure_radius
from training.scenario import BUMP


def build_tiny_model(model_dir: Path, arch: str = "deep", seed: int = 0, scale_stride: int = 1) -> Path:
    """An untrained but complete model directory (model.onnx + card.json + README.md)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch=arch,
        channels=[4, 6, 8],
        decoder=[6, 4],
        first_kernel=9,
        scale_window=127 if scale_stride == 1 else 31 * scale_stride,
        scale_stride=scale_stride,
    )
    net = build_model(cfg).eval()
    if getattr(net, "matched", None) is not None:
        net.matched_gain.fill_(0.5)  # exercise the matched-filter path (random weights) too
    model_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(net, model_dir / "model.onnx")
    alignment = int(getattr(net, "alignment", 1))
    card = make_card(
        model_dir,
        name=model_dir.name,
        version="0.0.1",
        description="tiny untrained test model",
        labels=["bump"],
        min_length=16,
        receptive_field=2 * measure_radius(net) + 1,
        alignment=alignment,
        threshold=0.5,
        threshold_selection="fixed for tests",
        min_distance=10,
        min_distance_selection="fixed for tests",
        template=[float(v) for v in BUMP.values],
        template_center=BUMP.center,
    )
    save_card(model_dir, card)
    return model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_strided_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like tiny_model_dir, with the normalisation scale averaged over blocks of 8 (alignment 8)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "strided", scale_stride=8)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A model directory like the shipped one, with tiny models: 'bump' (default) and 'other'."""
    import shutil

    root = tmp_path_factory.mktemp("served")
    for name in ("bump", "other"):
        shutil.copytree(tiny_model_dir, root / name)
        card = (root / name / "card.json").read_text().replace('"name": "tiny"', f'"name": "{name}"')
        (root / name / "card.json").write_text(card)
    return root


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's; never Playwright's download


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright, with the flags this closed network needs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()
