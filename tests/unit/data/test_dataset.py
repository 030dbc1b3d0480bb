"""Loading and validating the UCI data: CSV and official .xls layouts, precise error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from creditstream.cli import app
from creditstream.contract import FEATURE_SPECS, FEATURES, ID_FIELD, LABEL_FIELD
from creditstream.data.dataset import (
    COLUMNS,
    DatasetError,
    content_sha256,
    load_dataset,
    normalised_csv,
    validate_frame,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def valid_frame(rows: int = 40, seed: int = 7) -> pd.DataFrame:
    """Contract-valid rows drawn from each feature's documented range (not real data)."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {ID_FIELD: np.arange(1, rows + 1)}
    for name in FEATURES:
        spec = FEATURE_SPECS[name]
        low, high = max(spec.minimum, -1e6), min(spec.maximum, 1e6)
        data[name] = rng.integers(int(low), int(high) + 1, rows)
    data[LABEL_FIELD] = rng.integers(0, 2, rows)
    return pd.DataFrame(data)


def write_xls(frame: pd.DataFrame, path: Path) -> None:
    """Write the official UCI .xls layout: a row of codes (X1..X23, Y), then the names."""
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("Data")
    codes = ["", *(f"X{i}" for i in range(1, 24)), "Y"]
    names = [ID_FIELD, *FEATURES, "default payment next month"]
    for col, (code, name) in enumerate(zip(codes, names, strict=True)):
        sheet.write(0, col, code)
        sheet.write(1, col, name)
    for row, values in enumerate(frame.loc[:, list(COLUMNS)].itertuples(index=False), start=2):
        for col, value in enumerate(values):
            sheet.write(row, col, int(value))
    book.save(str(path))


def test_valid_frame_is_normalised() -> None:
    raw = valid_frame().sample(frac=1.0, random_state=1).astype(str)
    raw["extra"] = "ignored"
    frame = validate_frame(raw)
    assert tuple(frame.columns) == COLUMNS
    assert frame[ID_FIELD].is_monotonic_increasing
    assert all(dtype == np.int64 for dtype in frame.dtypes)


def test_csv_and_xls_layouts_normalise_to_the_same_content(tmp_path: Path) -> None:
    frame = valid_frame()
    csv_path = tmp_path / "data.csv"
    frame.astype("float64").to_csv(csv_path, index=False)  # NOTE: floats like 20000.0
    xls_path = tmp_path / "data.xls"
    write_xls(frame, xls_path)
    from_csv = load_dataset(csv_path)
    from_xls = load_dataset(xls_path)
    pd.testing.assert_frame_equal(from_csv, from_xls)
    assert content_sha256(from_csv) == content_sha256(from_xls)
    assert normalised_csv(from_csv).startswith(b"ID,LIMIT_BAL,SEX,")


def _set(column: str, row: int, value: object) -> pd.DataFrame:
    frame = valid_frame().astype(object)
    frame.loc[row, column] = value
    return frame


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(
            valid_frame().drop(columns=["AGE", "PAY_AMT6"]),
            "missing column(s): AGE, PAY_AMT6",
            id="missing-columns",
        ),
        pytest.param(
            _set("BILL_AMT3", 4, None),
            "column BILL_AMT3: 1 missing value(s), e.g. row 5 (ID 5)",
            id="missing-value",
        ),
        pytest.param(
            _set("LIMIT_BAL", 2, "lots"),
            "column LIMIT_BAL: 1 value(s) not a number, e.g. row 3 (ID 3): 'lots'",
            id="not-a-number",
        ),
        pytest.param(
            _set("EDUCATION", 0, 2.5),
            "column EDUCATION: 1 value(s) not a whole number",
            id="fractional-code",
        ),
        pytest.param(
            _set("AGE", 9, 150),
            "column AGE: 1 value(s) outside [18, 120], e.g. row 10 (ID 10): 150",
            id="age-out-of-range",
        ),
        pytest.param(
            _set("PAY_0", 1, -3), "column PAY_0: 1 value(s) outside [-2, 9]", id="pay-out-of-range"
        ),
        pytest.param(
            _set("PAY_AMT1", 1, -5),
            "column PAY_AMT1: 1 value(s) outside [0, 1e+08]",
            id="negative-payment",
        ),
        pytest.param(
            _set(LABEL_FIELD, 3, 2),
            f"column {LABEL_FIELD}: 1 value(s) outside [0, 1]",
            id="label-not-binary",
        ),
        pytest.param(_set(ID_FIELD, 1, 1), "column ID: 2 rows share an ID", id="duplicate-id"),
        pytest.param(_set("SEX", 0, "inf"), "column SEX: 1 non-finite value(s)", id="infinite"),
    ],
)
def test_invalid_frames_say_exactly_what_is_wrong(frame: pd.DataFrame, expected: str) -> None:
    with pytest.raises(DatasetError) as caught:
        validate_frame(frame, "fixture.csv")
    assert expected in str(caught.value)
    assert "fixture.csv" in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    frame = _set("AGE", 0, 5)
    frame.loc[1, "SEX"] = 3
    with pytest.raises(DatasetError) as caught:
        validate_frame(frame)
    assert [p.split(":")[0] for p in caught.value.problems] == ["column SEX", "column AGE"]


def test_expect_full_counts_rows() -> None:
    validate_frame(valid_frame(), expect_full=False)
    with pytest.raises(DatasetError, match="expected the full data set of 30000 rows, found 40"):
        validate_frame(valid_frame(), expect_full=True)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(None, "no such file", id="absent"),
        pytest.param(b"a,b\n1,2\n", "missing column(s): ID", id="wrong-columns"),
        pytest.param(b"", "cannot read as .csv", id="empty"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(path)


def test_xls_without_header_row_is_rejected(tmp_path: Path) -> None:
    import xlwt

    book = xlwt.Workbook()
    book.add_sheet("Data").write(0, 0, "not the UCI layout")
    path = tmp_path / "data.xls"
    book.save(str(path))
    with pytest.raises(DatasetError, match="no header row starting with 'ID'"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("corrupt", "code", "expected"),
    [
        pytest.param(False, 0, "rows:           40", id="valid"),
        pytest.param(True, 1, "column AGE: 1 value(s) outside", id="invalid"),
    ],
)
def test_check_data_command(tmp_path: Path, corrupt: bool, code: int, expected: str) -> None:
    frame = _set("AGE", 0, 200) if corrupt else valid_frame()
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    result = CliRunner().invoke(app, ["check-data", "--data", str(path), "--any-size"])
    assert result.exit_code == code, result.output
    assert expected in result.output
    if not corrupt:
        assert f"content sha256: {content_sha256(load_dataset(path))}" in result.output


def test_check_data_requires_the_full_set_by_default(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    valid_frame().to_csv(path, index=False)
    result = CliRunner().invoke(app, ["check-data", "--data", str(path)])
    assert result.exit_code == 1
    assert "expected the full data set of 30000 rows, found 40" in result.output
