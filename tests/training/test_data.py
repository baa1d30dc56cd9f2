from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, load_user_data
from training.evaluate import robust_normalise
from training.scenario import make_dataset, suites


def write_npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def generated(n: int = 30, length: int = 400) -> tuple[np.ndarray, np.ndarray]:
    data = make_dataset(suites()["white"], n, seed=11, length=length)
    events = np.array([(i, c) for i, e in enumerate(data.events) for c in e], dtype=np.int64).reshape(-1, 2)
    return np.stack(data.signals), events


def test_two_dimensional_signals(tmp_path: Path) -> None:
    x, ev = generated()
    user = load_user_data(write_npz(tmp_path / "d.npz", signals=x, events=ev, label="bump"))
    assert len(user.train) + len(user.val) + len(user.test) == 30
    assert user.train.n_events + user.val.n_events + user.test.n_events == len(ev)
    assert user.label == "bump"
    assert "mean of" in user.template_source and user.template.values.size == 41


def test_concatenated_signals_with_lengths_and_template(tmp_path: Path) -> None:
    x, ev = generated()
    lengths = np.full(len(x), x.shape[1])
    user = load_user_data(
        write_npz(
            tmp_path / "d.npz",
            signals=x.ravel(),
            lengths=lengths,
            events=ev,
            template=np.array([0.0, 1.0, 0.5, -0.2, 0.0]),
        )
    )
    assert user.template.center == 1 and user.template_source == "given in the data file"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, ev: {"signals": x, "events": ev[:, :1]}, r"shape \(k, 2\)"),
        (lambda x, ev: {"signals": x, "events": ev + np.array([0, 10_000])}, "outside signal"),
        (lambda x, ev: {"signals": x, "events": ev + np.array([100, 0])}, "does not exist"),
        (lambda x, ev: {"signals": x, "events": ev - np.array([0, 1000])}, "sample -.* is outside signal"),
        (
            lambda x, ev: {"signals": x, "events": np.vstack([ev, ev[3:4]])},
            r"events rows 3 and 38 both mark sample \d+ of signal \d+; give each event once",
        ),
        (
            lambda x, ev: {
                "signals": np.where(np.arange(x.size).reshape(x.shape) == 805, np.nan, x),
                "events": ev,
            },
            "signal 2 has a non-finite value .* at sample 5",
        ),
        (
            lambda x, ev: {
                "signals": np.where(np.arange(x.size).reshape(x.shape) == 805, 1e39, x),
                "events": ev,
            },
            r"signal 2 has a value \(1e\+39\) at sample 5 outside the float32 range .*rescale the signals",
        ),
        (lambda x, ev: {"signals": x[:, :10], "events": ev[:0]}, "need at least 64"),
        (lambda x, ev: {"signals": x[:5], "events": ev[:0]}, "need at least 10 .* cut long recordings into"),
        (
            lambda x, ev: {"signals": np.where(np.arange(x.shape[1]) >= 390, np.nan, x), "events": ev},
            r"signal 0 has a non-finite value \(nan\) at sample 390, and only NaN after it: .* 'lengths'",
        ),
        (lambda x, ev: {"signals": x[None], "events": ev}, "1-D .* or 2-D"),
        (lambda x, ev: {"signals": x.ravel(), "events": ev}, "needs 'lengths'"),
        (lambda x, ev: {"signals": x.ravel(), "lengths": np.array([5, 5]), "events": ev}, "add up"),
        (lambda x, ev: {"events": ev}, "no 'signals'"),
        (lambda x, ev: {"signals": x}, "no 'events'"),
        (lambda x, ev: {"signals": x.astype(str), "events": ev}, "real numbers"),
        (lambda x, ev: {"signals": x, "events": ev, "template": np.ones(5)}, "constant"),
        # the template in the file is checked as --template's is
        (lambda x, ev: {"signals": x, "events": ev, "template": np.array([0.0, 1, 0])}, "at least 5"),
        (lambda x, ev: {"signals": x, "events": ev, "template": np.hanning(1100)}, "more than 1025"),
        (
            lambda x, ev: {"signals": x, "events": ev, "template": np.hanning(9), "template_center": [1, 2]},
            "'template_center' must be one integer",
        ),
        (
            lambda x, ev: {"signals": x, "events": ev, "template": np.hanning(9), "template_center": 2.7},
            "'template_center' must be one integer",
        ),
        (
            lambda x, ev: {"signals": x, "events": ev, "template": np.hanning(9), "template_center": 9},
            "outside the template",
        ),
        (lambda x, ev: {"signals": x, "events": ev, "template_center": 3}, "goes with 'template'"),
        (lambda x, ev: {"signals": x, "events": ev, "label": np.arange(3)}, "'label' must be one string"),
        (lambda x, ev: {"signals": x, "events": ev, "label": ""}, "'label' must be one string"),
    ],
)
def test_malformed_files(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    x, ev = generated()
    path = write_npz(tmp_path / "bad.npz", **change(x, ev))
    with pytest.raises(DataError, match=message):
        load_user_data(path)


def test_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"not an \.npz archive"):
        load_user_data(tmp_path / "x.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"expected an \.npz"):
        load_user_data(tmp_path / "one.npy")
    with pytest.raises(DataError, match="no such file"):
        load_user_data(tmp_path / "missing.npz")
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "pickled.npz", signals=obj, events=np.zeros((0, 2), dtype=int))
    with pytest.raises(DataError, match="pickle"):
        load_user_data(tmp_path / "pickled.npz")


def test_groups_keep_the_windows_of_one_recording_on_one_side(tmp_path: Path) -> None:
    """Signals cut from one recording (overlapping windows, near duplicates) stay together:
    split by signal, windows of one recording would land in training and in test alike."""
    rng = np.random.default_rng(0)
    recordings = [rng.standard_normal(1200) for _ in range(8)]
    windows = [(r, a) for r in range(8) for a in range(0, 1200 - 400 + 1, 100)]  # 9 per recording
    x = np.stack([recordings[r][a : a + 400] for r, a in windows])
    groups = np.array([r for r, _ in windows])
    ev = np.array([(i, 200) for i in range(len(x))])
    user = load_user_data(write_npz(tmp_path / "d.npz", signals=x, events=ev, groups=groups), seed=3)
    seen = [
        {int(groups[int(np.flatnonzero((x == s).all(axis=1))[0])]) for s in part.signals}
        for part in (user.train, user.val, user.test)
    ]
    assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(user.train) + len(user.val) + len(user.test) == len(x)
    assert user.describe()["split"]["test"]["groups"] == len(seen[2])


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (np.zeros(29, dtype=int), "one per signal"),
        (np.linspace(0, 1, 30), "integer"),
        (np.repeat([0, 1], 15), "at least 3"),
    ],
)
def test_malformed_groups(tmp_path: Path, groups: np.ndarray, message: str) -> None:
    x, ev = generated()
    with pytest.raises(DataError, match=message):
        load_user_data(write_npz(tmp_path / "g.npz", signals=x, events=ev, groups=groups))


def test_a_flat_estimated_template_is_refused(tmp_path: Path) -> None:
    """Events annotated where the signals are flat average to a constant shape: a first
    convolution started from it (unit norm) would be NaN."""
    x = np.zeros((20, 400))
    x[:, 300:] = np.random.default_rng(0).standard_normal((20, 100))
    ev = np.array([(i, 100) for i in range(20)])
    with pytest.raises(DataError, match=r"constant.*add 'template'"):
        load_user_data(write_npz(tmp_path / "flat.npz", signals=x, events=ev))


def test_files_that_are_not_an_npz_say_what_they_are(tmp_path: Path) -> None:
    """An empty file, a directory or a CSV given as --data: one line saying what to give."""
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.npz: the file is empty; save the arrays with np\.savez"):
        load_user_data(tmp_path / "empty.npz")
    with pytest.raises(DataError, match=r"a directory, not a file; give the \.npz file"):
        load_user_data(tmp_path)
    (tmp_path / "signals.csv").write_text("time,value\n0,0.5\n1,0.25\n")
    with pytest.raises(DataError, match=r"signals\.csv: not an \.npz archive \(np\.savez\)") as exc:
        load_user_data(tmp_path / "signals.csv")
    assert "pickle" not in str(exc.value)


def events_by_signal(x: np.ndarray, path: Path, seed: int = 0) -> dict[int, list[int]]:
    """The events the loader read, by the file's signal index (the splits shuffle signals); a
    split may hold none of them."""
    user = load_user_data(path, seed=seed, check_splits=False)
    found: dict[int, list[int]] = {}
    for part in (user.train, user.val, user.test):
        for signal, events in zip(part.signals, part.events, strict=True):
            (i,) = [k for k, row in enumerate(x) if np.array_equal(row, signal)]
            if events.size:
                found[i] = events.tolist()
    return found


def test_events_of_shape_2_by_2_are_two_rows(tmp_path: Path) -> None:
    """(2, 2) is read by the documented layout, one row (signal, sample) per event, even where
    its transpose would be valid too (here: samples 3 and 5 of signals 7 and 9)."""
    x, _ = generated()
    ev = np.array([[7, 3], [9, 5]])
    path = write_npz(tmp_path / "two.npz", signals=x, events=ev, template=np.hanning(9))
    assert events_by_signal(x, path, seed=1) == {7: [3], 9: [5]}


def test_events_written_as_columns_are_refused_with_the_layout(tmp_path: Path) -> None:
    """A row of signals over a row of samples (np.nonzero's layout) was refused as a shape
    error without saying why, or, at (2, 2), failed on a row that was never one event."""
    x, _ = generated()
    mask = np.zeros(x.shape, dtype=bool)
    mask[[0, 1, 2], [300, 100, 200]] = True
    path = write_npz(tmp_path / "cols.npz", signals=x, events=np.array(np.nonzero(mask)))
    with pytest.raises(DataError, match=r"shape \(2, 3\), a row of signals over a row of samples.*events\.T"):
        load_user_data(path)
    path = write_npz(tmp_path / "cols2.npz", signals=x, events=np.array([[0, 1], [300, 100]]))
    with pytest.raises(
        DataError, match=r"events row 1 \(signal, sample\): signal 300 does not exist .*save events\.T"
    ):
        load_user_data(path)


def test_the_template_estimate_normalises_each_recording_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long recording with many events: each signal is normalised once, not once per event
    (10 recordings of 200 000 samples with 2000 events each took two minutes to load)."""
    import training.data as data

    x, ev = generated()
    calls = []

    def counted(s: np.ndarray) -> np.ndarray:
        calls.append(s.size)
        return robust_normalise(s)

    monkeypatch.setattr(data, "robust_normalise", counted)
    user = load_user_data(write_npz(tmp_path / "d.npz", signals=x, events=ev))
    with_events = [s for s, e in zip(user.train.signals, user.train.events, strict=True) if e.size]
    assert len(calls) == len(with_events) < user.train.n_events
    w = data.TEMPLATE_HALF_WIDTH
    expected = np.mean(
        [
            robust_normalise(s)[c - w : c + w + 1]
            for s, e in zip(user.train.signals, user.train.events, strict=True)
            for c in e
            if w <= c < s.size - w
        ],
        axis=0,
    )
    np.testing.assert_array_equal(user.template.values, expected)


@pytest.mark.parametrize(
    ("key", "value", "meant"),
    [
        ("group", np.arange(30) % 5, "groups"),  # the recordings were ignored: split by signal
        ("template_centre", np.int64(4), "template_center"),
        ("Label", np.str_("blip"), "label"),
    ],
)
def test_a_misspelt_key_is_refused_naming_the_key_meant(
    tmp_path: Path, key: str, value: np.ndarray, meant: str
) -> None:
    x, ev = generated()
    path = write_npz(tmp_path / "d.npz", signals=x, events=ev, template=np.hanning(9), **{key: value})
    with pytest.raises(DataError, match=f"key '{key}' is not read; name it '{meant}'"):
        load_user_data(path)


def test_keys_that_are_not_misspellings_are_left_alone(tmp_path: Path) -> None:
    x, ev = generated()
    user = load_user_data(write_npz(tmp_path / "d.npz", signals=x, events=ev, fs=250.0, notes="ward 3"))
    assert len(user.train) + len(user.val) + len(user.test) == len(x)


def test_a_split_without_events_is_refused(tmp_path: Path) -> None:
    """Validation or test signals without any event: the threshold was chosen and the calibration
    left unfitted on no events, and the card reported an event F1 of 1 measured on none."""
    x, ev = generated(n=40)
    order = np.random.default_rng(1234).permutation(40)  # the split: 28 / 6 / 6 of a permutation
    for name, part in (("validation", order[28:34]), ("test", order[34:])):
        kept = ev[~np.isin(ev[:, 0], part)]
        path = write_npz(tmp_path / f"no_{name}.npz", signals=x, events=kept)
        with pytest.raises(
            DataError,
            match=rf"the {name} split \(6 of the 40 signals, split 70 / 15 / 15 by signal\) has no "
            "events .*; annotate events in more signals",
        ):
            load_user_data(path, seed=1234)
        user = load_user_data(path, seed=1234, check_splits=False)  # the report re-reads old cards' files
        assert (user.val if name == "validation" else user.test).n_events == 0
        assert user.train.n_events > 0


def test_a_file_without_events_says_so(tmp_path: Path) -> None:
    """No events at all: the message said to add a template, and with one, that the training split
    had no events."""
    x, _ = generated()
    for extra in ({}, {"template": np.hanning(9)}):
        path = write_npz(tmp_path / "none.npz", signals=x, events=np.zeros((0, 2), dtype=np.int64), **extra)
        with pytest.raises(DataError, match=r"'events' is empty; annotate the events"):
            load_user_data(path)
