"""Answers for several requests at once (as the batcher finishes a batch) equal one by one; the
body scan that decoding relies on."""

import io
import tracemalloc
from pathlib import Path
from unittest.mock import patch

import numpy as np
import orjson
import pytest

from app.core import oip, pipeline
from app.core.card import load_card
from app.core.model import InferenceOptions, OnnxModel
from app.core.pipeline import Decoded, count_byte, only_numbers_in, respond_many
from app.core.signals import Limits, parse_npy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["bump", "arrival"])  # shipped models: calibrated peaks and signals
def test_respond_many_equals_one_by_one(name: str) -> None:
    model = OnnxModel(ROOT / "models" / name, InferenceOptions(intra_op_threads=1))
    card = model.card
    rng = np.random.default_rng(3)
    template = 4 * np.asarray(card.template, dtype=np.float32)
    requests = []
    for k, (threshold, distance, scores) in enumerate(
        [
            (card.threshold, card.min_distance, False),
            (card.threshold, card.min_distance, False),
            (0.3, card.min_distance, False),
            (card.threshold, 1000, False),  # one peak per signal
            (card.threshold, card.min_distance, True),
            (card.threshold, card.min_distance, False),
        ]
    ):
        signals = [
            rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(200, 900, size=1 + k % 3)
        ]
        for s in signals:  # events near both ends and in the middle
            for start in (0, s.size // 2, s.size - template.size):
                s[start : start + template.size] += template
        decoded = Decoded(signals, threshold, distance, scores)
        requests.append((decoded, model.scores(signals)))
    together = respond_many(card, requests)
    alone = [respond_many(card, [request])[0] for request in requests]
    assert together == alone
    docs = [orjson.loads(a) for a in together]
    assert [len(d["results"]) for d in docs] == [len(d.signals) for d, _ in requests]
    counts = [[len(r["peaks"]) for r in d["results"]] for d in docs]
    assert all(c >= 3 for k in (0, 1, 4, 5) for c in counts[k]) and all(c == 1 for c in counts[3])
    for (decoded, _), doc in zip(requests, docs, strict=True):  # each with its own options
        want = model.detect(decoded.signals, decoded.threshold, decoded.min_distance)
        assert [[p["index"] for p in r["peaks"]] for r in doc["results"]] == [
            d.peaks.index.tolist() for d in want
        ]
        assert doc["threshold"] == decoded.threshold and doc["min_distance"] == decoded.min_distance
        assert all(("scores" in r) == decoded.return_scores for r in doc["results"])


def test_many_peaks_are_written_part_by_part_as_one_by_one() -> None:
    """Peaks written part by part (a low threshold on a long signal) make the same bytes as
    one object per peak: signals of a few to hundreds of peaks, parts of 1 to 7."""
    model = OnnxModel(ROOT / "models" / "bump", InferenceOptions(intra_op_threads=1))
    rng = np.random.default_rng(4)
    curves = [rng.random(n).astype(np.float32) for n in (16, 20, 40, 300, 3000)]
    signals = [np.zeros(c.size, np.float32) for c in curves]
    request = (Decoded(signals, 1e-6, 2, False), curves)
    with patch.object(pipeline, "PEAKS_PER_PART", 1 << 30):
        whole = respond_many(model.card, [request])[0]
    for per_part in (1, 2, 3, 7):
        with patch.object(pipeline, "PEAKS_PER_PART", per_part):
            assert respond_many(model.card, [request])[0] == whole
    counts = sorted(len(r["peaks"]) for r in orjson.loads(whole)["results"])
    assert counts[0] <= 7 < counts[-1] and counts[-1] > 500


def test_encode_infer_many_equals_one_by_one() -> None:
    model = OnnxModel(ROOT / "models" / "bump", InferenceOptions(intra_op_threads=1))
    rng = np.random.default_rng(4)
    template = 4 * np.asarray(model.card.template, dtype=np.float32)
    requests = []
    for parameters, outputs in [
        ({}, None),
        ({"threshold": 0.3}, None),
        ({}, ["scores", "peak_index"]),
        ({"min_distance": 1000}, ["peak_index", "peak_signal"]),
        ({}, None),
    ]:
        x = rng.standard_normal((2, 600)).astype(np.float32)
        x[:, 100 : 100 + template.size] += template
        x[:, 400 : 400 + template.size] += template
        doc: dict[str, object] = {
            "inputs": [{"name": "signal", "shape": [2, 600], "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": parameters,
        }
        if outputs is not None:
            doc["outputs"] = [{"name": name} for name in outputs]
        decoded = oip.decode_infer(model.card, orjson.dumps(doc), Limits(1024, 10**7, 10**7))
        requests.append((decoded, model.scores(decoded.signals)))
    together = oip.encode_infer_many(model.card, requests)
    assert together == [oip.encode_infer_many(model.card, [request])[0] for request in requests]
    for (decoded, _), encoded in zip(requests, together, strict=True):  # each with its own options
        out = {o["name"]: o["data"] for o in orjson.loads(encoded.body)["outputs"]}
        want = model.detect(decoded.signals, decoded.threshold, decoded.min_distance)
        assert out["peak_index"] == [i for d in want for i in d.peaks.index.tolist()]
        assert ("scores" in out) == decoded.wants("scores")
    assert len(orjson.loads(together[3].body)["outputs"][0]["data"]) == 2  # one peak per signal


@pytest.mark.parametrize(
    "body", [b"", b'"', b'""', b'"a""b"', b'{"signals":[[1]],"x":"y"}', bytearray(b'{"a":1}'), b"[1,2]"]
)
def test_quotes_counts_as_count_does_up_to_its_limit(body: bytes) -> None:
    for most in range(6):
        assert count_byte(body, b'"', most) == min(body.count(b'"'), most)
        for end in range(len(body) + 1):
            assert count_byte(body, b'"', most, end) == min(body[:end].count(b'"'), most)


ONLY_NUMBERS = {  # body -> whether the data list can hold only numbers (and null)
    b'{"inputs": [{"name": "signal", "data": [1, 2.5, -3e-05, null]}]}': True,
    b'{"id": "tft", "parameters": {"binary_data_output": true, "f": false}, "inputs": [{"data": [[1], [2]]}]}': True,
    '{"id": "\u00e9t\u00e9", "inputs": [{"data": [1]}]}'.encode(): True,  # non-ASCII around a 't'
    b'{"inputs": [{"data": [1, true]}]}': False,
    b'{"inputs": [{"data": [false, 1]}]}': False,
    b'{"inputs": [{"data": [1, "2"]}]}': False,
    b'{"inputs": [{"data": [[1], ["t"]]}]}': False,
    b'{"id": "\\u0074", "inputs": [{"data": [1, true]}]}': False,  # an escape hides a 't'
    b'{"id": "\\"", "inputs": [{"data": [1]}]}': False,  # any escape: the per-value path
}


@pytest.mark.parametrize("body", ONLY_NUMBERS)
def test_only_numbers_in_data_is_shown_from_the_text(body: bytes) -> None:
    doc = orjson.loads(body)
    data = doc["inputs"][0]["data"]
    assert only_numbers_in(body, len(body), doc, data) is ONLY_NUMBERS[body]
    assert only_numbers_in(bytearray(body), len(body), doc, data) is ONLY_NUMBERS[body]
    truth = all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in _flat(data))
    if ONLY_NUMBERS[body]:  # never claimed wrongly
        assert truth


def _flat(data: list[object]) -> list[object]:
    return [v for row in data for v in (row if isinstance(row, list) else [row])]


@pytest.mark.parametrize(
    "doc",
    [
        {
            "inputs": [
                {
                    "name": "signal",
                    "shape": [2, 300],
                    "datatype": "FP32",
                    "data": np.linspace(-1, 1, 600).tolist(),
                }
            ]
        },
        {
            "inputs": [
                {
                    "name": "signal",
                    "shape": [1, 300],
                    "datatype": "FP64",
                    "data": [[0.1 * i for i in range(300)]],
                }
            ]
        },
        {
            "inputs": [{"name": "signal", "shape": [300], "datatype": "FP32", "data": list(range(300))}],
            "id": "t",
        },
        {
            "parameters": {"binary_data_output": True, "threshold": 0.4},
            "inputs": [{"name": "signal", "shape": [1, 300], "datatype": "FP32", "data": [1e-7] * 300}],
            "outputs": [{"name": "scores", "parameters": {"binary_data": False}}],
        },
    ],
)
def test_the_vectorised_data_path_decodes_as_the_per_value_path(
    doc: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    card = load_card(ROOT / "models" / "bump")
    limits = Limits(16, 200_000, 100_000)
    body = orjson.dumps(doc)
    fast = oip.decode_infer(card, body, limits)
    monkeypatch.setattr(oip, "only_numbers_in", lambda *args: False)
    slow = oip.decode_infer(card, body, limits)
    assert len(fast.signals) == len(slow.signals)
    for a, b in zip(fast.signals, slow.signals, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (fast.threshold, fast.min_distance, fast.outputs) == (
        slow.threshold,
        slow.min_distance,
        slow.outputs,
    )


@pytest.mark.parametrize("dtype", ["i1", "<i2", ">i2", "<u2", "<i4", ">u4", "<i8"])
def test_integer_npy_bodies_give_the_values_of_float64_in_at_most_their_memory(dtype: str) -> None:
    """An integer .npy is copied as floats: the values the model gets (float32) are those of
    the integers read as float64, as JSON's are; up to 32-bit ones as float32, in half the
    memory float64 took (8 bytes per sample for an int8 body's 1)."""
    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(3)
    values = rng.integers(
        info.min, info.max, size=(2, 200_000), dtype=np.dtype(dtype).newbyteorder("="), endpoint=True
    )
    values[0, :4] = [info.min, info.max, 0, info.max - 1]
    buf = io.BytesIO()
    np.save(buf, values.astype(dtype))
    body = buf.getvalue()
    tracemalloc.start()
    try:
        signals = parse_npy(body, Limits(8, 10**6, 10**6), 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = values.astype(np.float64).astype(np.float32)
    for got, want in zip(signals, expected, strict=True):
        assert np.array_equal(got.astype(np.float32), want)
    per_sample = 4 if np.dtype(dtype).itemsize <= 4 else 8
    assert peak <= per_sample * values.size * 1.05 + 64 * 1024, (dtype, peak / values.size)
