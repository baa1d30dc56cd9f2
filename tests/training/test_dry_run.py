"""The whole training pipeline, tiny: train, export, evaluate the ONNX file, write the card."""

import argparse
import hashlib
import html
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.core.card import load_card
from app.core.model import OnnxModel
from training.data import load_user_data
from training.matched import GAINS
from training.model import ModelConfig
from training.report import card_template
from training.scenario import BUMP, EVAL_SEEDS, VALIDATION_SEEDS, make_dataset, signal_lengths, suites
from training.template import load_template, template_from_values
from training.train import (
    calibration_count,
    main,
    parse_budget,
    polarity_warning,
    weights_data_problem,
    weights_source,
)


def test_dry_run_end_to_end(tmp_path: Path) -> None:
    model_dir = main(["--dry-run", "--out", str(tmp_path), "--name", "dry"])
    card = load_card(model_dir)
    assert set(card.metrics) == {"white", "lowsnr", "jitter", "nuisance"}
    for by_detector in card.metrics.values():
        assert set(by_detector) == {"model", "matched_filter"}
        assert by_detector["model"].signals == 40
    assert card.training["dry_run"] is True
    assert card.parity_max_abs_error is not None and card.parity_max_abs_error <= 1e-4
    assert 0 < card.threshold < 1 and card.min_distance >= 1
    readme = (model_dir / "README.md").read_text()
    assert "| white | model |" in readme
    path = card.training["matched_path"]  # the matched-filter gain, chosen on validation data
    assert [r["gain"] for r in path["candidates"]] == list(GAINS) and path["gain"] in GAINS
    assert all(0 <= r["inverted_rate"] <= 1 for r in path["candidates"]) and "inverted" in path["rule"]
    assert all(0 <= r["inverted_rate_at_equal_false_alarms"] <= 1 for r in path["candidates"])
    # chosen on more validation signals than the operating point (a dry run: 24 of each)
    assert path["signals"] == dict.fromkeys(["white", "lowsnr", "jitter", "nuisance", "polarity_sets"], 24)
    arch = card.training["architecture"]
    assert (arch["matched_veto"], arch["matched_veto_margin"]) == (8.0, 0.5)  # the path's veto, recorded
    window = card.training["architecture"]["matched_mean_window"]
    assert window == (0 if path["gain"] == 0 else 127)  # a dropped path is not in the graph
    (d,) = OnnxModel(model_dir).detect([np.zeros(300)])
    assert 0 <= d.probability <= 1


def test_dry_run_on_user_data(tmp_path: Path) -> None:
    data = make_dataset(suites()["white"], 40, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    np.savez(tmp_path / "mine.npz", signals=np.stack(data.signals), events=events, label="blip")
    model_dir = main(
        ["--dry-run", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path), "--name", "mine"]
    )
    card = load_card(model_dir)
    assert card.labels == ["blip"]
    assert set(card.metrics) == {"user"}
    assert set(card.metrics["user"]) == {"model", "matched_filter"}
    assert card.training["data"]["split"]["test"]["signals"] == 6


def test_label_names_the_shape_of_user_data_too(tmp_path: Path) -> None:
    """--label named the shape with --template only; with --data it was silently dropped."""
    data = make_dataset(suites()["white"], 30, seed=9, length=512)  # events in every split
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    np.savez(tmp_path / "mine.npz", signals=np.stack(data.signals), events=events, label="blip")
    args = ["--dry-run", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path), "--name", "mine"]
    model_dir = main([*args, "--label", "heartbeat", "--budget", "2"])
    card = load_card(model_dir)
    assert card.labels == ["heartbeat"]
    # the maps are fitted on the validation split and measured on the test split, and say so
    split = card.training["data"]["split"]
    assert card.calibration is not None
    calibration = card.calibration.model_dump()
    assert calibration["fit_data"].startswith(f"{split['val']['signals']} signals of ")
    assert "the validation split to fit, the test split held out" in calibration["fit_data"]
    assert calibration["ece"]["held_out_data"].startswith(f"{split['test']['signals']} signals of ")


def test_dry_run_on_user_data_where_every_signal_holds_events(tmp_path: Path) -> None:
    """Recordings chosen because they hold events leave no event-free validation signal to match
    the matched filter's false-alarm rate on: its threshold is then chosen as the model's is,
    for the best validation event F1, and the card says so (it used to end in a traceback)."""
    data = make_dataset(replace(suites()["white"], p_empty=0.0), 40, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    np.savez(tmp_path / "busy.npz", signals=np.stack(data.signals), events=events)
    model_dir = main(
        ["--dry-run", "--data", str(tmp_path / "busy.npz"), "--out", str(tmp_path), "--name", "busy"]
    )
    mf = load_card(model_dir).metrics["user"]["matched_filter"].model_dump()
    assert "best validation event F1" in mf["threshold_selection"] and mf["threshold"] > 0
    # The model's README and report said the baseline matched the model's false-alarm rate.
    said = f"; on user: {mf['threshold_selection']}"
    assert (
        f"false-alarm rate on the suite's event-free validation signals{said}."
        in (model_dir / "README.md").read_text()
    )
    assert f"(the CNN's false-alarm rate{html.escape(said)}) when" in (model_dir / "report.html").read_text()


def test_single_layer_dry_run(tmp_path: Path) -> None:
    model_dir = main(["--dry-run", "--arch", "single", "--out", str(tmp_path), "--name", "one"])
    card = load_card(model_dir)
    assert card.alignment == 8  # the normalisation's scale blocks
    assert card.macs_per_sample == 42.0


def test_training_is_reproducible(tmp_path: Path) -> None:
    """The same seed gives the same ONNX file, byte for byte, and the same metrics."""
    a = load_card(main(["--dry-run", "--out", str(tmp_path / "a"), "--name", "rep"]))
    b = load_card(main(["--dry-run", "--out", str(tmp_path / "b"), "--name", "rep"]))
    assert a.sha256 == b.sha256
    assert a.metrics == b.metrics
    c = load_card(main(["--dry-run", "--out", str(tmp_path / "c"), "--name", "rep", "--seed", "7"]))
    assert c.sha256 != a.sha256


def test_weights_from_reexports_the_same_network(tmp_path: Path) -> None:
    """--weights-from skips training: the network is the source's, chosen, exported and
    evaluated again; another architecture is refused."""
    source = load_card(main(["--dry-run", "--out", str(tmp_path / "a"), "--name", "w", "--seed", "3"]))
    again = main(
        [
            "--dry-run",
            "--out",
            str(tmp_path / "b"),
            "--name",
            "w",
            "--weights-from",
            str(tmp_path / "a" / "w"),
        ]
    )
    card = load_card(again)
    assert card.training["weights_from"]["model"] == f"w {source.version}"
    assert card.training["weights_from"]["sha256"] == source.sha256
    assert card.training["history"] == source.training["history"]
    assert card.training["seconds"] == source.training["seconds"]
    assert (
        f"- Network: the weights of w {source.version} (sha256 `{source.sha256}`)"
        in (again / "README.md").read_text()
    )
    assert card.parity_max_abs_error is not None and card.parity_max_abs_error <= 1e-4
    x = [np.random.default_rng(5).standard_normal(n) for n in (300, 1000)]
    for a, b in zip(OnnxModel(tmp_path / "a" / "w").scores(x), OnnxModel(again).scores(x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    other = ["--channels", "8", "16", "32", "--weights-from", str(tmp_path / "a" / "w")]
    with pytest.raises(SystemExit, match=r"another architecture .*channels"):
        main(["--dry-run", "--out", str(tmp_path / "c"), "--name", "w", *other])


def test_weights_from_a_card_older_than_the_decoder_kernel_option(tmp_path: Path) -> None:
    """A card written before the decoder_kernel option (``arrival`` 1.3.0's) has none: its
    decoder ran the other convolutions' length. Its own arguments match it, a network with
    another decoder kernel does not."""
    arrival = tmp_path / "arrival"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "arrival", arrival)
    doc = json.loads((arrival / "card.json").read_text())
    assert doc["training"]["architecture"].pop("decoder_kernel") is None  # the default: kernel_size
    (arrival / "card.json").write_text(json.dumps(doc))
    card = load_card(arrival)
    arch = dict(card.training["architecture"])
    assert "decoder_kernel" not in arch
    theirs = ModelConfig(**{**arch, "decoder_kernel": arch["kernel_size"]})
    assert weights_source(arrival, theirs).sha256 == card.sha256
    assert weights_source(arrival, ModelConfig(**{**arch, "decoder_kernel": None})).sha256 == card.sha256
    with pytest.raises(SystemExit, match=r"another architecture \(decoder_kernel 5 there, 3 here\)"):
        weights_source(arrival, ModelConfig(**{**arch, "decoder_kernel": 3}))


def test_kernel_lengths_reach_the_exported_convolutions(tmp_path: Path) -> None:
    def widths(model_dir: Path, part: str) -> list[int]:
        inits = onnx.load(str(model_dir / "model.onnx")).graph.initializer
        return sorted(
            {int(t.dims[-1]) for t in inits if t.name.startswith(f"net.{part}") and t.name.endswith("weight")}
        )

    default = main(["--dry-run", "--out", str(tmp_path / "a"), "--budget", "2"])
    assert widths(default, "encoders") == [5, 41] and widths(default, "decoders") == [3]
    # the reference bump's recipe: the shipped `bump`'s architecture
    shipped = load_card(Path(__file__).resolve().parents[2] / "models" / "bump").training["architecture"]
    assert load_card(default).training["architecture"] == shipped
    args = ["--kernel-size", "3", "--decoder-kernel", "1", "--budget", "2"]
    model_dir = main(["--dry-run", "--out", str(tmp_path / "b"), *args])
    architecture = load_card(model_dir).training["architecture"]
    assert architecture["kernel_size"] == 3 and architecture["decoder_kernel"] == 1
    # the first convolution keeps the template's length
    assert widths(model_dir, "encoders") == [3, 41] and widths(model_dir, "decoders") == [1]


def test_dry_run_from_a_template(tmp_path: Path) -> None:
    """A user's template (CSV), polarity on, scenario defaults changed: the whole path."""
    s = np.arange(30.0)
    values = np.sin(2 * np.pi * s / 10) * np.exp(-s / 8)
    (tmp_path / "ring.csv").write_text("\n".join(f"{v:.6f}" for v in values))
    model_dir = main(
        [
            "--dry-run",
            "--template",
            str(tmp_path / "ring.csv"),
            "--name",
            "ring",
            "--out",
            str(tmp_path),
            "--polarity",
            "--scenario",
            "p_spikes=0.1",
            "--scenario",
            "stretch=0.9,1.1",
            "--scenario",
            "snr=3,9",
        ]
    )
    card = load_card(model_dir)
    assert card.labels == ["ring"] and card.polarity is True and "(either polarity)" in card.description
    assert card.template == pytest.approx(np.round(values, 6).tolist())
    assert card.template_center == int(np.argmax(np.abs(np.round(values, 6))))
    c = card.template_center
    arch = card.training["architecture"]
    assert arch["first_kernel"] == 2 * max(c, 29 - c) + 1  # centred template
    # a template keeps the general defaults, not the reference bump's recipe
    assert (arch["channels"], arch["decoder"], arch["decoder_kernel"]) == ([8, 16, 24], [16, 8], None)
    scenario = card.training["data"]["training_scenario"]
    assert scenario["p_spikes"] == 0.1 and scenario["stretch"] == [0.9, 1.1]
    assert scenario["snr"] == [3.0, 9.0]  # --scenario snr=LO,HI is --snr (it was a TypeError)
    assert scenario["polarity"] is True and scenario["p_inverted"] == 0.0
    assert set(card.metrics) == {"white", "lowsnr", "jitter", "nuisance"}
    assert card.training["polarity_check"]["inverted_counts_as_event"] is True
    assert card.training["architecture"]["matched_two_sided"] is True  # |correlation|
    assert "inverted" not in card.training["matched_path"]["rule"]  # no budget when they count
    cal = card.calibration
    assert cal is not None and set(cal.model_dump()["ece"]["summary"]) == {"signal", "peak", "reported_peak"}
    (d,) = OnnxModel(model_dir).detect([np.zeros(300)])
    assert 0 <= d.probability <= 1


def test_dry_run_card_is_calibrated_and_evaluated_as_shipped(tmp_path: Path) -> None:
    """The card's held-out model metrics are those of the service's own detection function."""
    from training import evaluate as ev

    model_dir = main(["--dry-run", "--out", str(tmp_path), "--name", "cal"])
    card = load_card(model_dir)
    assert card.calibration is not None
    ece = card.calibration.model_dump()["ece"]
    assert ece["bins"] == 10 and ece["held_out"]["signal"]["after"]["samples"] == 80
    assert (model_dir / "report" / "reliability.png").is_file()  # the report's reliability diagram
    assert 'id="calibration"' in (model_dir / "report.html").read_text()
    model = OnnxModel(model_dir)
    data = make_dataset(suites()["white"], 40, seed=EVAL_SEEDS["white"])
    shipped = model.detect(data.signals)
    m, _ = ev.shipped_metrics(model, data, card.threshold, card.min_distance)
    assert m == pytest.approx(card.metrics["white"]["model"].model_dump(), nan_ok=True)
    curves = ev.calibrated_curves(model, ev.model_curves(model, data))
    n_detected = sum(len(d.peaks) for d in shipped)
    counts = ev.event_counts(curves, data.events, card.threshold, card.min_distance)
    assert n_detected == counts.detections


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--center", "3"], "--center goes with --template (the template's event sample"),
        # with --data, the event sample is the data file's: it said only "goes with --template"
        (
            ["--data", "events.npz", "--center", "5"],
            "--center goes with --template, not --data: with --data the template's event sample is "
            "the data file's 'template_center' (see README: 'Your own data'); save it there, next to "
            "'template', and leave --center out",
        ),
        (["--name", "My Model"], "lower-case letters"),
        (["--scenario", "bogus=1"], "KEY one of"),
        (["--scenario", "stretch=1.2,0.9"], "give LO,HI"),
        (["--budget", "0"], "give steps"),
        (["--budget", "ten"], "give steps"),
        (["--kernel-size", "4"], "--kernel-size 4: give an odd number"),
        (["--decoder-kernel", "0"], "--decoder-kernel 0: give an odd number"),
        (["--mean-window", "30"], "--mean-window 30: give an odd number"),
        (["--matched-mean-window", "128"], "--matched-mean-window 128: give an odd number"),
        (["--matched-clip", "0"], "--matched-clip 0.0: give a positive"),
        (["--inverted-budget", "1.5"], "--inverted-budget 1.5: give a share between 0 and 1"),
        # each was silently ignored: no inverted copies weighed, or no path to choose for
        (["--inverted-budget", "0.05", "--polarity"], "--inverted-budget does not apply with --polarity"),
        (["--inverted-budget", "0.05", "--arch", "single"], "does not apply with --arch single"),
        (
            ["--inverted-budget", "0", "--matched-mean-window", "0"],
            "--inverted-budget does not apply with --matched-mean-window 0",
        ),
        (["--matched-veto", "-1"], "--matched-veto -1.0 --matched-veto-margin 0.5: give non-negative"),
        (["--matched-veto-margin", "nan"], "--matched-veto-margin nan: give non-negative"),
        (["--calibration-signals", "0"], "--calibration-signals 0: give a positive number"),
        (["--gain-signals", "0"], "--gain-signals 0: give a positive number"),
        # each used to end in a traceback, or to train on nothing
        (["--batch-size", "0"], "--batch-size 0: give a positive number"),
        (["--steps", "0"], "--steps 0: give a positive number"),
        (["--eval-signals", "0"], "--eval-signals 0: give a positive number"),
        (["--val-signals", "-1"], "--val-signals -1: give a positive number"),
        (["--lr", "0"], "--lr 0.0: give a positive learning rate"),
        (["--local-weight", "-1"], "--local-weight -1.0: give a non-negative weight"),
        (["--threads", "-2"], "--threads -2: give a number of threads from 0 (all cores) to "),
        # as many threads started at once: 100 000 left the machine unable to start a process
        (["--threads", "100000"], "--threads 100000: give a number of threads from 0 (all cores) to "),
        (["--first-kernel", "40"], "--first-kernel 40: give an odd number"),
        (["--channels", "8", "16"], "give one --decoder entry fewer than --channels"),
        (["--decoder", "16"], "give one --decoder entry fewer than --channels"),
        (["--channels", "0", "16", "24"], "--channels 0 16 24: give positive numbers"),
        (["--scale-stride", "0"], "--scale-window 1016 --scale-stride 0: give a scale window of an odd"),
        (["--scale-stride", "7"], "--scale-window 1016 --scale-stride 7: give a scale window of an odd"),
        (["--snr", "10", "2"], "--snr 10.0 2.0: give 0 <= LOW <= HIGH"),
        (["--max-minutes", "nan"], "--max-minutes nan: give a number of minutes"),  # a traceback
        # one silently overrode the other
        (["--budget", "10m", "--steps", "300"], "--budget and --steps: --budget sets the training length"),
        (["--budget", "300", "--max-minutes", "1"], "--budget and --max-minutes: --budget sets the"),
        (["--scenario", "snr=-1,3"], "--scenario 'snr=-1,3': give non-negative numbers"),
        (["--scenario", "polarity=1"], "--scenario 'polarity=1': give --polarity"),
        (["--scenario", "p_empty=1.5"], "--scenario 'p_empty=1.5': give a share between 0 and 1"),
        (["--scenario", "max_events=0"], "--scenario 'max_events=0': give a positive number"),
        (["--scenario", "spike_every=0"], "--scenario 'spike_every=0': give a positive number"),
        (["--scenario", "drift_period=0,1"], "--scenario 'drift_period=0,1': give positive numbers"),
        (["--scenario", "length=10,20"], "too short for 3 events of the 41-sample template"),
        (["--scenario", "max_events=20"], "too short for 20 events of the 41-sample template"),
        (["--version", "1.0 beta"], "--version '1.0 beta': use no slash and no white space"),
        # the card named the shape '  ' (or, for '', the default without a word)
        (["--label", ""], "--label '': give the shape's name, or leave --label out for the default"),
        (["--label", " \t"], "--label ' \\t': give the shape's name, or leave --label out"),
        (
            ["--description", "  "],
            "--description '  ': say when to use the model, or leave --description out",
        ),
    ],
)
def test_bad_options_exit_with_a_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--dry-run", "--out", str(tmp_path), *args])
    assert message in str(exc.value.code) + capsys.readouterr().err


def test_inverted_budget_goes_with_generated_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --data no inverted copies are generated to weigh: the budget was silently ignored."""
    np.savez(tmp_path / "d.npz", signals=np.zeros((20, 600)), events=np.array([(0, 300)]))
    with pytest.raises(SystemExit):
        main(
            ["--dry-run", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path), "--inverted-budget", "0"]
        )
    assert "--inverted-budget does not apply with --data" in capsys.readouterr().err


def test_help_and_a_blank_label_give_the_label_default_of_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --data and no 'label' in the file, the card's label is 'event' (training.data); the
    help and the blank --label message said the model name."""
    signals = np.random.default_rng(0).standard_normal((20, 600))
    np.savez(tmp_path / "d.npz", signals=signals, events=np.array([(i, 300) for i in range(20)]))
    assert load_user_data(tmp_path / "d.npz").label == "event"
    with pytest.raises(SystemExit):
        main(["--dry-run", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path), "--label", " "])
    assert (
        "leave --label out for the default (the data file's label, else 'event')" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--dry-run", "--out", str(tmp_path), "--label", " "])
    assert "leave --label out for the default (the model name)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: with --data, the file's label, else 'event'; otherwise the model name)" in help_text


def test_help_says_which_options_go_with_generated_data_only(capsys: pytest.CaptureFixture[str]) -> None:
    """--data refuses each of these (README, "Your own data"); the help of
    --calibration-signals did not say so."""
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--eval-signals", "--val-signals", "--gain-signals", "--calibration-signals"):
        entry = help_text.split(f" {flag} {flag.lstrip('-').replace('-', '_').upper()} ", 1)[1]
        entry = entry.split(" --", 1)[0]
        assert "generated data only" in entry, (flag, entry)


def test_scenario_options_go_with_generated_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--scenario changes the generated data: with --data it was silently ignored."""
    np.savez(tmp_path / "d.npz", signals=np.zeros((20, 600)), events=np.array([(0, 300)]))
    with pytest.raises(SystemExit):
        main(
            [
                "--dry-run",
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path),
                "--scenario",
                "p_spikes=0",
            ]
        )
    assert "--scenario goes with generated data" in capsys.readouterr().err


def test_snr_goes_with_generated_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--snr LOW HIGH is --scenario snr=LOW,HIGH: with --data it was silently ignored."""
    np.savez(tmp_path / "d.npz", signals=np.zeros((20, 600)), events=np.array([(0, 300)]))
    with pytest.raises(SystemExit):
        main(["--dry-run", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path), "--snr", "1", "5"])
    assert "--snr goes with generated data" in capsys.readouterr().err


def test_a_bad_template_exits_with_its_problem(tmp_path: Path) -> None:
    (tmp_path / "flat.csv").write_text("1\n1\n1\n1\n1\n1\n")
    with pytest.raises(SystemExit, match="constant"):
        main(["--dry-run", "--template", str(tmp_path / "flat.csv"), "--out", str(tmp_path)])


def test_a_bad_data_set_exits_with_its_problem(tmp_path: Path) -> None:
    """As a bad template does: the problem in one line, not at the end of a traceback."""
    np.savez(tmp_path / "few.npz", signals=np.zeros((5, 600), np.float32), events=np.zeros((5, 1)))
    with pytest.raises(SystemExit) as exc:
        main(["--dry-run", "--data", str(tmp_path / "few.npz"), "--out", str(tmp_path)])
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("training.train: "), exc.value.code


def test_budget_parsing() -> None:
    assert parse_budget("3000") == (3000, None)
    assert parse_budget("10m") == (None, 10.0) and parse_budget("2.5min") == (None, 2.5)
    for text in ("infm", "1e400min", "nanm", "0m", "-5"):  # "infm" ended in an OverflowError
        with pytest.raises(argparse.ArgumentTypeError, match="give steps"):
            parse_budget(text)


def test_a_budget_in_minutes_or_steps(tmp_path: Path) -> None:
    model_dir = main(["--dry-run", "--budget", "0.05m", "--out", str(tmp_path), "--name", "quick"])
    card = load_card(model_dir)
    cfg = card.training["config"]
    assert cfg["schedule"] == "time" and cfg["minutes"] == 0.05 and cfg["steps"] >= 1
    assert 3.0 <= card.training["training_loop_seconds"] < 60
    model_dir = main(["--dry-run", "--budget", "12", "--out", str(tmp_path), "--name", "steps"])
    cfg = load_card(model_dir).training["config"]
    assert cfg["schedule"] == "steps" and cfg["steps"] == 12


def test_a_template_whose_polarity_cannot_be_told_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chirp under the default stretches: a warning, no decoys, no veto, no inverted budget;
    without stretched events (p_stretch=0), the usual decoys and veto."""
    chirp = Path(__file__).parents[2] / "training" / "templates" / "chirp.npy"
    args = ["--dry-run", "--template", str(chirp), "--name", "chirp", "--budget", "4"]
    card = load_card(main([*args, "--out", str(tmp_path / "default")]))
    err = capsys.readouterr().err
    assert "polarities cannot be told apart" in err and "give --scenario p_stretch=0" in err
    info = card.training["polarity"]
    assert info["identifiable"] is False and info["decoys"] is False and info["inverted_match"] > 0.97
    assert info["stretch_limit"] == 0.0  # only unstretched chirps keep the polarities apart
    assert card.training["data"]["training_scenario"]["p_inverted"] == 0.0
    assert card.training["architecture"]["matched_veto"] == 0.0
    assert "inverted" not in card.training["matched_path"]["rule"]
    assert card.polarity is False  # inverted copies are still not events; the check measures them
    assert "detection_rate_inverted" in card.training["polarity_check"]
    readme = (tmp_path / "default" / "chirp" / "README.md").read_text()
    assert "the two polarities cannot be told apart: trained without inverted decoys" in readme
    # No inverted copies are weighed against events: an inverted budget was silently ignored.
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "budget"), "--inverted-budget", "0.05"])
    err = capsys.readouterr().err
    assert "--inverted-budget does not apply: " in err and "leave it out (or give --polarity)" in err
    assert not (tmp_path / "budget").exists()

    card = load_card(main([*args, "--out", str(tmp_path / "narrow"), "--scenario", "p_stretch=0"]))
    assert "cannot be told apart" not in capsys.readouterr().err
    info = card.training["polarity"]
    assert info["identifiable"] is True and info["decoys"] is True and info["at_stretch"] == 1.0
    assert card.training["data"]["training_scenario"]["p_inverted"] > 0
    assert card.training["architecture"]["matched_veto"] == 8.0
    assert "inverted" in card.training["matched_path"]["rule"]
    readme = (tmp_path / "narrow" / "chirp" / "README.md").read_text()
    assert "- Polarity: an inverted copy of the shape is not an event; the model detects" in readme
    assert "cannot be told apart" not in readme


def test_calibration_sets_hold_12000_signals_fewer_for_long_templates() -> None:
    """Enough reported peaks to measure an ECE of 0.02, without minutes of scoring for long
    templates: at most 24 M samples per set, but never fewer than 4000 signals."""
    chirp = Path(__file__).parents[2] / "training" / "templates" / "chirp.npy"
    assert calibration_count(BUMP) == calibration_count(load_template(chirp)) == 12000
    medium = template_from_values(np.hanning(400))
    lo, hi = signal_lengths(medium)
    assert 4000 < calibration_count(medium) < 12000
    assert calibration_count(medium) * (lo + hi) / 2 <= 24_000_000
    assert calibration_count(template_from_values(np.hanning(1025))) == 4000


def test_the_polarity_warning_says_what_training_does_and_what_to_do() -> None:
    info = {"stretch_limit": 0.07, "at_stretch": 0.95, "inverted_match": 0.98, "decoys": False}
    text = polarity_warning(info, veto=0.0)
    assert "stretched by 0.95 and shifted at 0.98" in text
    assert "without inverted decoys and without the path's veto" in text
    assert "give --scenario stretch=0.93,1.07" in text and "give --polarity" in text
    asked = polarity_warning({**info, "decoys": True, "stretch_limit": None}, veto=8.0)
    assert "with inverted decoys (as asked) and with the path's veto (as asked)" in asked
    assert "Even unstretched events do not keep them apart" in asked


@pytest.mark.parametrize(
    ("seed", "what"),
    [(1001, "the held-out white suite"), (2004, "the nuisance validation suite"), (3002, "calibration")],
)
def test_a_seed_of_a_held_out_set_is_refused(
    seed: int, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generated training signals come from ``default_rng(--seed)``: with a held-out set's seed
    they would share that set's noise (the first training signal correlates 0.93 with the
    first test signal of the white suite at --seed 1001)."""
    with pytest.raises(SystemExit) as exc:
        main(["--dry-run", "--budget", "2", "--out", str(tmp_path), "--seed", str(seed)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--seed {seed} is the seed of" in err and what in err


@pytest.mark.parametrize(
    "flag", ["--eval-signals", "--val-signals", "--calibration-signals", "--gain-signals"]
)
def test_generated_set_sizes_go_with_generated_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """With --data the splits are the validation, test and calibration sets: a size for the
    generated sets was silently ignored, and the card's config recorded it as if used."""
    np.savez(tmp_path / "d.npz", signals=np.zeros((20, 600)), events=np.array([(0, 300)]))
    with pytest.raises(SystemExit):
        main(["--dry-run", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path), flag, "50"])
    assert f"{flag} goes with generated data" in capsys.readouterr().err


def test_a_user_data_card_records_the_file_and_the_splits_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card identifies the data file by its absolute path and sha256; it recorded the path
    as given on the command line (here relative to the working directory), and no more."""
    data = make_dataset(suites()["white"], 40, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mine.npz", signals=np.stack(data.signals), events=events)
    monkeypatch.chdir(tmp_path / "data")
    model_dir = main(["--dry-run", "--data", "mine.npz", "--out", str(tmp_path), "--name", "m"])
    training = load_card(model_dir).training
    path = (tmp_path / "data" / "mine.npz").resolve()
    assert training["data"]["source"] == str(path)
    assert training["data"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    split, config = training["data"]["split"], training["config"]
    assert (config["val_signals"], config["eval_signals"]) == (
        split["val"]["signals"],
        split["test"]["signals"],
    )
    assert config["calibration_signals"] == config["gain_signals"] == split["val"]["signals"]


def test_the_matched_filter_is_matched_at_the_shipped_threshold(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline's threshold matches the model's false-alarm rate at the threshold the card
    ships (rounded to 3 digits), not at the unrounded one chosen on validation: a validation
    maximum between the two counted as a false alarm the shipped model does not raise."""
    from app.core.model import detections
    from training import evaluate as ev
    from training.train import evaluate_exported

    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    val = {"white": make_dataset(suites()["white"], 40, seed=VALIDATION_SEEDS["white"], length=512)}
    curves = ev.model_curves(OnnxModel(model_dir), val["white"])
    maxima = sorted(float(c.max()) for c, e in zip(curves, val["white"].events, strict=True) if e.size == 0)
    # An event-free maximum that rounds up at 3 digits: chosen as the raw threshold, it is a
    # false alarm there and none at the shipped threshold.
    raw = next(m for m in maxima if float(f"{m:.3g}") > m)
    monkeypatch.setattr(ev, "choose_operating_point", lambda *_: (raw, 10, 0.5))
    event_free = make_dataset(replace(suites()["white"], p_empty=1.0), 20, seed=11, length=512)
    fields = load_card(model_dir).model_dump(
        include={"name", "version", "description", "labels", "min_length", "receptive_field", "alignment"}
    )
    result = evaluate_exported(
        model_dir, fields, val, val, (event_free, event_free, "event-free signals"), BUMP, False
    )
    assert result["threshold"] == float(f"{raw:.3g}")  # identity maps: the rounded raw threshold
    shipped = detections(curves, result["threshold"], 10, calibrator=load_card(model_dir).calibrator)
    rate = float(
        np.mean([d.detected for d, e in zip(shipped, val["white"].events, strict=True) if e.size == 0])
    )
    assert rate < ev.false_alarm_rate(curves, val["white"].events, raw)  # the two operating points differ
    mf = ev.matched_filter_curves(val["white"], BUMP)
    assert result["metrics"]["white"]["matched_filter"]["threshold"] == ev.threshold_for_rate(
        mf, val["white"].events, rate
    )


def test_a_dry_run_keeps_the_sizes_given_and_shrinks_the_rest(tmp_path: Path) -> None:
    """--dry-run replaced --steps, --batch-size and every set size with its own tiny ones, even
    those the user gave: the sizes given are kept, the others are the dry run's."""
    given = ["--steps", "3", "--batch-size", "4", "--eval-signals", "12", "--calibration-signals", "30"]
    card = load_card(main(["--dry-run", "--out", str(tmp_path), "--name", "sizes", *given]))
    config = card.training["config"]
    assert (config["steps"], config["batch_size"], config["eval_signals"]) == (3, 4, 12)
    assert config["calibration_signals"] == 30 and config["max_minutes"] is None
    assert all(m["model"].signals == 12 for m in card.metrics.values())
    assert card.calibration is not None
    assert card.calibration.model_dump()["ece"]["held_out"]["signal"]["after"]["samples"] == 30
    # not given: the dry run's
    assert (config["val_signals"], config["gain_signals"]) == (24, 24)
    assert card.training["matched_path"]["signals"]["white"] == 24


def test_an_output_that_is_a_file_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out, or --out/--name, a file: the export after training ended in NotADirectoryError."""
    (tmp_path / "taken").write_text("")
    for out, name, file in (("taken", "x", "taken"), ("taken/sub", "x", "taken"), (".", "taken", "taken")):
        with pytest.raises(SystemExit):
            main(["--dry-run", "--out", str(tmp_path / out), "--name", name])
        assert f"{tmp_path / file} is a file, not a directory" in capsys.readouterr().err


def test_weights_from_needs_the_data_its_network_was_trained_on(tmp_path: Path) -> None:
    """--weights-from with another --seed (or file) re-split the user's data: the test split held
    the signals the network was trained on, and the card reported them as held out."""
    data = make_dataset(suites()["white"], 20, seed=9, length=512)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e]).reshape(-1, 2)
    np.savez(tmp_path / "mine.npz", signals=np.stack(data.signals), events=events)
    np.savez(tmp_path / "other.npz", signals=2 * np.stack(data.signals), events=events)
    mine, other = (
        load_user_data(tmp_path / "mine.npz", seed=5),
        load_user_data(tmp_path / "other.npz", seed=5),
    )
    source = load_card(Path(__file__).resolve().parents[2] / "models" / "bump")
    user_source = source.model_copy(
        update={"training": {"config": {"seed": 5}, "data": mine.describe()}, "template": None}
    )
    assert weights_data_problem(user_source, mine, mine.template, 5) is None
    assert "--seed 5, which splits the data otherwise" in str(
        weights_data_problem(user_source, load_user_data(tmp_path / "mine.npz", seed=6), mine.template, 6)
    )
    assert "another data file" in str(weights_data_problem(user_source, other, other.template, 5))
    assert "not generated data" in str(weights_data_problem(user_source, None, BUMP, 5))
    assert "not a data file" in str(weights_data_problem(source, mine, mine.template, 1234))
    assert weights_data_problem(source, None, BUMP, 7) is None  # generated: the seed is free
    tpl = template_from_values(np.hanning(41))
    assert "another template" in str(weights_data_problem(source, None, tpl, 1234))


def test_a_cards_template_is_the_same_one_computed_again_on_another_cpu() -> None:
    """numpy's exp and cos may round differently on another CPU: a card's bump, written where it
    was trained, differs from the bump computed here in the last bits. --weights-from and the
    report take it for the same template; a real change of shape, or of centre, is another."""
    source = load_card(Path(__file__).resolve().parents[2] / "models" / "bump")
    last_bits = np.nextafter(BUMP.values, np.inf)  # each value one step up
    moved = source.model_copy(update={"template": last_bits.tolist()})
    assert moved.template != [float(v) for v in BUMP.values]
    assert weights_data_problem(moved, None, BUMP, 7) is None
    assert card_template(moved) is BUMP
    for update in ({"template": (BUMP.values + 1e-6).tolist()}, {"template_center": 19}):
        other = source.model_copy(update=update)
        assert "another template" in str(weights_data_problem(other, None, BUMP, 7))
        assert card_template(other) is not BUMP


def test_a_template_or_data_file_without_a_name_does_not_replace_the_reference_bump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--name (and make's NAME) defaults to bump: `training.train --template my_shape.csv` trained
    a detector for another shape into models/bump, named and labelled bump, over the shipped one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "bump").mkdir(parents=True)
    (tmp_path / "models" / "bump" / "card.json").write_text("the shipped card")
    (tmp_path / "shape.csv").write_text("0\n1\n3\n1\n0\n")
    np.savez(tmp_path / "d.npz", signals=np.zeros((20, 600)), events=np.array([(0, 300)]))
    for args in (
        ["--template", "shape.csv"],
        ["--data", "d.npz"],
        ["--template", "shape.csv", "--name", "bump"],
    ):
        with pytest.raises(SystemExit):
            main(["--dry-run", *args])
        assert "with --name bump: the model would replace models/bump" in capsys.readouterr().err
    for args in (["--template", "shape.csv", "--out", "models"], ["--data", "d.npz", "--out", "./models/"]):
        with pytest.raises(SystemExit):
            main(["--dry-run", *args])
        assert "name yours (--name my_shape; with make: NAME=my_shape)" in capsys.readouterr().err
    assert (tmp_path / "models" / "bump" / "card.json").read_text() == "the shipped card"
    assert not (tmp_path / "models" / "bump" / "model.onnx").exists()
