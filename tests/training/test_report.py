"""The training report: a self-contained HTML page with every section, and decodable PNGs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from app.core.card import load_card
from training import evaluate as ev
from training.data import DataError, load_user_data
from training.report import REPORT_FILE, held_out_sets, link_readme, main, signed_matches, write_report
from training.scenario import BUMP, EVAL_SEEDS, make_dataset, suites

SECTIONS = ("training", "roc", "localisation", "calibration", "gallery", "walkthrough")


class Links(HTMLParser):
    """Every src and href in a page, and the ids of its sections."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.sections: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "poster", "data") and v]
        if tag == "img":
            self.images += 1
        if tag == "section" and a.get("id"):
            self.sections.append(str(a["id"]))


def copy_model(src: Path, tmp_path: Path) -> Path:
    """A private copy: the session's tiny model is shared with other tests."""
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def check_page(model_dir: Path, sections: tuple[str, ...] = SECTIONS) -> tuple[str, Links]:
    page = (model_dir / REPORT_FILE).read_text(encoding="utf-8")
    links = Links()
    links.feed(page)
    # Self-contained: no URL leaves the file (images are data: URLs, links are #anchors).
    for url in links.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url
    assert not re.search(r"https?://", page), "a URL in the page"
    assert "<script" not in page.lower()
    assert links.sections == list(sections)
    # Every embedded image is a PNG that decodes and equals a file in report/.
    files = {p.read_bytes() for p in (model_dir / "report").glob("*.png")}
    embedded = [base64.b64decode(u.split(",", 1)[1]) for u in links.urls if u.startswith("data:")]
    assert len(embedded) == links.images >= 1
    for png in embedded:
        assert png in files
        image = imread(io.BytesIO(png), format="png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return page, links


def test_report_of_a_model_without_history_or_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny test model's card has no training section: the report still has every section."""
    model_dir = copy_model(tiny_model_dir, tmp_path)
    out = write_report(model_dir, signals=12, gallery=4, log=None)
    assert out == model_dir / REPORT_FILE
    page, links = check_page(model_dir)
    assert "no training history" in page
    assert "12 signals each" in page  # the fallback held-out sets, with --signals
    names = sorted(p.name for p in (model_dir / "report").glob("*.png"))
    assert names == [
        "gallery_01.png",
        "gallery_02.png",
        "gallery_03.png",
        "gallery_04.png",
        "localisation.png",
        "roc.png",
        "walkthrough.png",
    ]
    assert links.images == len(names)
    readme = (model_dir / "README.md").read_text(encoding="utf-8")
    assert readme.count("(report.html)") == 1
    assert readme.startswith("# tiny 0.0.1")  # the card's README is kept, the link appended
    assert link_readme(model_dir) is False  # idempotent
    assert (model_dir / "README.md").read_text(encoding="utf-8") == readme


def test_report_from_the_cards_history_and_held_out_seeds(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With training history and test seeds in the card (as training writes them), via the CLI."""
    model_dir = copy_model(tiny_model_dir, tmp_path)
    card = json.loads((model_dir / "card.json").read_text())
    card["training"] = {
        "best_step": 20,
        "history": [
            {"step": s, "train_loss": 1.0 / s, "loss": 2.0 / s, "auc_white": 0.5 + s / 100, "auc_lowsnr": 0.5}
            for s in (10, 20, 30)
        ],
        "data": {"test": {s: {"signals": 10, "seed": EVAL_SEEDS[s]} for s in ("white", "nuisance")}},
    }
    (model_dir / "card.json").write_text(json.dumps(card))
    main([str(model_dir), "--gallery", "2"])
    page, _ = check_page(model_dir)
    assert "regenerated from their seeds: white 10 (seed 1001), nuisance 10 (seed 1004)" in page
    assert (model_dir / "report" / "training.png").is_file()
    # A second run replaces the images (no stale gallery files) and keeps one README link.
    main([str(model_dir), "--gallery", "1", "--signals", "6"])
    page, _ = check_page(model_dir)
    assert "white 6 (seed 1001)" in page
    assert not (model_dir / "report" / "gallery_02.png").exists()
    assert (model_dir / "README.md").read_text().count("(report.html)") == 1


def test_the_matched_filter_gain_has_its_section(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A card with training.matched_path: every candidate in a table, the chosen one in bold."""
    model_dir = copy_model(tiny_model_dir, tmp_path)
    card = json.loads((model_dir / "card.json").read_text())
    rows = [
        {
            "gain": g,
            "validation_auc": {"white": 0.99 + g / 100, "lowsnr": 0.95},
            "mean_auc": 0.97 + g / 200,
            "operating_point": {"threshold": 0.3 + g / 10, "min_distance": 40, "f1": 0.9},
            "empty_rate": 0.05,
            "upright_rate": 0.95,
            "inverted_rate": 0.1 + g / 10,
            "inverted_rate_at_equal_false_alarms": 0.3 + g / 10,
        }
        for g in (0.0, 0.5, 1.0)
    ]
    card["training"] = {
        "matched_path": {"gain": 0.5, "rule": "best mean validation AUC", "candidates": rows},
        "architecture": {"matched_veto": 8.0, "matched_two_sided": False},
    }
    (model_dir / "card.json").write_text(json.dumps(card))
    main([str(model_dir), "--gallery", "1", "--signals", "6"])
    sections = (*SECTIONS[:2], "matched", *SECTIONS[2:])
    page, _ = check_page(model_dir, sections)
    matched = page.split('<section id="matched">')[1].split("</section>")[0]
    assert matched.count("<tr") == 4  # the header and three gains
    assert '<tr style="font-weight:bold"><td>0.5</td>' in matched
    assert "inverted detected" in matched and "<td>0.2000</td>" in matched  # gain 1's inverted rate
    assert "vetoed where an inverted copy fits better" in matched  # the card's path, described
    assert "false-alarm rate</th>" in matched and "<td>0.4000</td>" in matched  # and at equal false alarms
    assert "cannot be told apart" not in matched
    assert "Validation signals." in matched  # a card that does not say how many

    # How many signals the gain was chosen on, when the card says
    card["training"]["matched_path"]["signals"] = {"white": 2000, "lowsnr": 2000, "polarity_sets": 1500}
    (model_dir / "card.json").write_text(json.dumps(card))
    main([str(model_dir), "--gallery", "1", "--signals", "6"])
    page, _ = check_page(model_dir, sections)
    assert "Validation signals (2000 per suite, 1500 in each polarity set)." in page

    # A shape whose inverted copy is a stretched upright one: no veto, and the section says why.
    card["training"]["architecture"]["matched_veto"] = 0.0
    card["training"]["polarity"] = {"inverted_match": 0.98, "at_stretch": 0.95, "identifiable": False}
    (model_dir / "card.json").write_text(json.dumps(card))
    main([str(model_dir), "--gallery", "1", "--signals", "6"])
    page, _ = check_page(model_dir, sections)
    matched = page.split('<section id="matched">')[1].split("</section>")[0]
    assert "vetoed" not in matched
    assert "stretched by 0.95 and shifted at 0.98 of its own match" in matched


def test_fewer_signals_are_a_prefix_of_the_cards_set() -> None:
    """--signals N evaluates the first N signals of the card's held-out set, not other ones."""
    sc = suites()["jitter"]
    full, few = make_dataset(sc, 12, 1003), make_dataset(sc, 5, 1003)
    for a, b in zip(few.signals, full.signals[:5], strict=True):
        np.testing.assert_array_equal(a, b)


def test_signed_matches_agree_with_the_evaluation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        peaks = np.sort(rng.choice(100, size=rng.integers(0, 6), replace=False)).astype(np.int64)
        centres = np.sort(rng.choice(100, size=rng.integers(0, 6), replace=False)).astype(np.int64)
        signed, used_p, used_c = signed_matches(peaks, centres)
        assert sorted(np.abs(signed).tolist()) == sorted(ev.match_events(peaks, centres).tolist())
        assert used_p.sum() == used_c.sum() == signed.size


def test_cli_rejects_a_bad_signal_count(tiny_model_dir: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tiny_model_dir), "--signals", "0"])


def test_cli_rejects_a_negative_gallery(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A negative count was taken: the gallery then left out its last signals, silently."""
    with pytest.raises(SystemExit):
        main([str(tiny_model_dir), "--gallery", "-2"])
    assert "--gallery -2: give a number of signals, 0 or more (0: no gallery)" in capsys.readouterr().err


@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_cli_rejects_threads_it_cannot_run_on(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], threads: str
) -> None:
    """Taken, a negative count was onnxruntime's default, and 100 000 threads were started at
    once: the machine could start no process until the report was killed."""
    with pytest.raises(SystemExit):
        main([str(tiny_model_dir), "--threads", threads])
    err = capsys.readouterr().err
    assert f"--threads {threads}: give a number of threads from 0 (onnxruntime's default) to " in err


def test_a_user_data_card_names_its_file_by_path_and_sha256(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The report re-reads a user's data file: from the card's absolute path, from a new place
    with --data, and never a file whose sha256 is not the card's (whatever file stood at the
    path was re-split as if it were the card's data)."""
    model_dir = copy_model(tiny_model_dir, tmp_path)
    data = make_dataset(suites()["white"], 20, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    path = tmp_path / "mine.npz"
    np.savez(path, signals=np.stack(data.signals), events=events)
    user = load_user_data(path, seed=5)
    doc = json.loads((model_dir / "card.json").read_text())
    doc["training"] = {"config": {"seed": 5}, "data": user.describe()}
    (model_dir / "card.json").write_text(json.dumps(doc))
    card = load_card(model_dir)
    held = held_out_sets(card, BUMP, None)
    assert [x.tolist() for x in held.sets["user"].signals] == [x.tolist() for x in user.test.signals]
    assert f"the test split of {path} (sha256 {user.sha256[:12]}" in held.source

    moved = path.rename(tmp_path / "moved.npz")
    with pytest.raises(FileNotFoundError, match=r"which is not here; .*\(--data FILE\)"):
        held_out_sets(card, BUMP, None)
    assert len(held_out_sets(card, BUMP, None, data_file=moved).sets["user"]) == len(user.test)

    np.savez(path, signals=2 * np.stack(data.signals), events=events)  # another file at the path
    with pytest.raises(
        DataError, match=rf"not the file the model was trained on \(sha256 \w+, the card's {user.sha256}"
    ):
        held_out_sets(card, BUMP, None)
    with pytest.raises(
        SystemExit, match=r"training\.report: .*mine\.npz: not the file the model was trained on"
    ):
        main([str(model_dir), "--signals", "2"])


def test_the_report_reads_a_card_s_data_file_with_a_misspelt_key(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Training refuses a key like 'group' now; a card trained on such a file before, with the
    key ignored, keeps its report: the file is re-split as training split it."""
    model_dir = copy_model(tiny_model_dir, tmp_path)
    data = make_dataset(suites()["white"], 20, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    path = tmp_path / "mine.npz"
    np.savez(path, signals=np.stack(data.signals), events=events, group=np.arange(20) % 4)
    with pytest.raises(DataError, match="name it 'groups'"):
        load_user_data(path, seed=5)
    user = load_user_data(path, seed=5, check_keys=False)
    doc = json.loads((model_dir / "card.json").read_text())
    doc["training"] = {"config": {"seed": 5}, "data": user.describe()}
    (model_dir / "card.json").write_text(json.dumps(doc))
    held = held_out_sets(load_card(model_dir), BUMP, None)
    assert [x.tolist() for x in held.sets["user"].signals] == [x.tolist() for x in user.test.signals]
