"""Pure stage transforms: raw strings → contract, contract → engineered vectors, score decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from creditstream.codec import ValidRecord, validate_record
from creditstream.contract import FEATURES
from creditstream.stages.transforms import (
    BAD_ENVELOPE,
    coerce_raw,
    decode_engineered,
    features_batch,
    preprocess,
)
from creditstream.stages.worker import output_id

pytestmark = pytest.mark.unit

# The first row of the UCI CSV, as the file holds it (strings, PAY_x -2, label included).
RAW = dict(
    zip(
        ["ID", *FEATURES, "default.payment.next.month"],
        [
            "1",
            "20000",
            "2",
            "2",
            "1",
            "24",
            "2",
            "2",
            "-1",
            "-1",
            "-2",
            "-2",
            "3913",
            "3102",
            "689",
            "0",
            "0",
            "0",
            "0",
            "689",
            "0",
            "0",
            "0",
            "0",
            "1",
        ],
        strict=True,
    )
)
LIMITS = {"max_body_bytes": 1_000_000, "max_records": 100}


def test_coerce_raw_keeps_the_quirks_and_drops_the_label() -> None:
    quirky = {**RAW, "EDUCATION": "6", "MARRIAGE": "0", "BILL_AMT1": " 3913.5 "}
    record = coerce_raw(quirky)
    assert "default.payment.next.month" not in record
    assert record["EDUCATION"] == 6 and record["MARRIAGE"] == 0 and record["PAY_5"] == -2
    assert record["BILL_AMT1"] == 3913.5 and record["ID"] == 1
    assert isinstance(validate_record(record), ValidRecord)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"LIMIT_BAL": "lots"}, "wrong-type", id="text"),
        pytest.param({"AGE": ""}, "missing-field", id="empty-cell"),
        pytest.param({"EDUCATION": "2.5"}, "wrong-type", id="fraction-code"),
        pytest.param({"AGE": "nan"}, "not-finite", id="nan"),
        pytest.param({"SEX": "7"}, "out-of-range", id="range"),
        pytest.param({"extra": "1"}, None, id="extra-column-dropped"),
    ],
)
def test_preprocess_rejects_bad_rows_alone(change: dict[str, str], reason: str | None) -> None:
    body = orjson.dumps([RAW, {**RAW, **change, "ID": "2"}])
    out = preprocess(body, "application/json", **LIMITS)
    envelope = orjson.loads(out.body or b"null")
    assert envelope["batch"] is True
    if reason is None:
        assert out.rejections == [] and out.n_out == 2
        return
    assert [i["index"] for i in envelope["items"]] == [0]
    (rejection,) = out.rejections
    assert (rejection.reason, rejection.index, rejection.raw["ID"]) == (reason, 1, "2")


def test_preprocess_whole_body_rejections() -> None:
    out = preprocess(b"{not json", "application/json", **LIMITS)
    assert out.body is None and out.rejections[0].reason == "malformed-json"
    out = preprocess(orjson.dumps(RAW), "text/csv", **LIMITS)
    assert out.body is None and out.rejections[0].reason == "wrong-content-type"


def test_features_batch_one_engineer_call_per_batch_and_indices_kept() -> None:
    calls: list[int] = []

    def engineer(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        return np.hstack([X, X[:, :1] / np.float32(3)]).astype(np.float32)

    single = preprocess(orjson.dumps(RAW), "application/json", **LIMITS).body
    pair = preprocess(orjson.dumps([RAW, {**RAW, "ID": "9"}]), "application/json", **LIMITS).body
    assert single is not None and pair is not None
    outputs = features_batch([single, pair, b"[]"], engineer)
    assert calls == [3]
    first = orjson.loads(outputs[0].body or b"null")
    assert first["batch"] is False and first["items"][0]["ID"] == 1
    vector = first["items"][0]["engineered"]
    assert len(vector) == 24
    # NOTE: float32 → JSON → float32 is exact: the score stage sees the features stage's bits.
    assert np.float32(vector[-1]) == np.float32(20000) / np.float32(3)
    second = orjson.loads(outputs[1].body or b"null")
    assert [i["index"] for i in second["items"]] == [0, 1]
    assert outputs[2].body is None and outputs[2].rejections[0].reason == BAD_ENVELOPE


def test_decode_engineered_validates_width_and_values() -> None:
    decode = decode_engineered(3)
    body = orjson.dumps(
        {
            "batch": True,
            "items": [
                {"index": 0, "ID": 5, "engineered": [1.0, 2.0, 3.0]},
                {"index": 1, "ID": 6, "engineered": [1.0, 2.0]},
                {"index": 2, "ID": True, "engineered": [1.0, 2.0, 3.0]},
            ],
        }
    )
    decoded = decode(body, "application/json", {})
    assert decoded.is_batch
    assert decoded.records == [ValidRecord(5, 0, (1.0, 2.0, 3.0))]
    assert [(r.reason, r.index) for r in decoded.rejections] == [
        ("wrong-type", 1),
        ("wrong-type", 2),
    ]
    assert decode(b"[1]", None, {}).rejections[0].reason == BAD_ENVELOPE


def test_output_ids_are_derived_and_bounded() -> None:
    assert output_id("run-000000001", "preprocess") == "run-000000001|preprocess"
    assert output_id(output_id("m", "preprocess"), "features") == "m|preprocess|features"
    long = output_id("x" * 300, "features")
    assert long.startswith("sha256:") and long == output_id("x" * 300, "features")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("9" * 5000, id="over-int-max-str-digits"),
        pytest.param("1" * 400 + ".5", id="float-overflow"),
    ],
)
def test_a_pathological_cell_is_a_rejection_not_an_exception(value: str) -> None:
    body = orjson.dumps([RAW, {**RAW, "LIMIT_BAL": value, "ID": "2"}])
    out = preprocess(body, "application/json", **LIMITS)
    assert out.n_out == 1
    (rejection,) = out.rejections
    assert rejection.index == 1 and rejection.reason in {"wrong-type", "out-of-range", "not-finite"}


def test_raw_rows_read_a_bank_export_as_the_fused_loader_does(tmp_path: Path) -> None:
    """BOM (Excel "CSV UTF-8"), spaces after commas, CRLF, quoted numbers."""
    from creditstream.data.dataset import load_dataset
    from creditstream.stages.raw import raw_rows

    header = ",".join(["ID", *FEATURES, "default.payment.next.month"])
    row = ", ".join(f'"{RAW[k]}"' if k == "LIMIT_BAL" else RAW[k] for k in RAW)
    path = tmp_path / "export.csv"
    path.write_bytes(("\ufeff" + header + "\r\n" + row + "\r\n").encode("utf-8"))
    (raw,) = list(raw_rows(path))
    record = coerce_raw(raw)
    assert isinstance(validate_record(record), ValidRecord)
    fused = load_dataset(path, expect_full=False)
    assert record == {k: int(fused.iloc[0][k]) for k in ["ID", *FEATURES]}
