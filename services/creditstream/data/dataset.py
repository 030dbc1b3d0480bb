"""Load the UCI "default of credit card clients" data (CSV or official .xls) and validate it."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from creditstream.contract import FEATURE_SPECS, FEATURES, ID_FIELD, LABEL_FIELD

if TYPE_CHECKING:
    import pandas as pd

FULL_ROWS: Final = 30_000
COLUMNS: Final[tuple[str, ...]] = (ID_FIELD, *FEATURES, LABEL_FIELD)
# NOTE: the official .xls names the label with spaces; the common CSV (Kaggle mirror) with dots.
LABEL_ALIASES: Final = ("default payment next month",)
_EXCEL_SUFFIXES: Final = frozenset({".xls", ".xlsx"})
_MAX_EXAMPLES: Final = 3


class DatasetError(ValueError):
    """The data set is unreadable or breaks the contract; the message says exactly how."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid data set {self.path}:\n{listing}")


@dataclass(frozen=True)
class DatasetSummary:
    """What `creditstream check-data` prints about a valid data set."""

    path: Path
    file_format: str
    rows: int
    defaults: int
    file_sha256: str
    content_sha256: str

    @property
    def default_rate(self) -> float:
        """Share of rows whose label is 1."""
        return self.defaults / self.rows if self.rows else 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        return [
            f"data:           {self.path} ({self.file_format})",
            f"rows:           {self.rows}",
            f"default rate:   {self.default_rate:.4f} ({self.defaults} defaults)",
            f"file sha256:    {self.file_sha256}",
            f"content sha256: {self.content_sha256}",
        ]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalised_csv(frame: pd.DataFrame) -> bytes:
    """The canonical serialisation: COLUMNS order, sorted by ID, integers as integers, LF."""
    ordered = frame.loc[:, list(COLUMNS)].sort_values(ID_FIELD, kind="stable")
    return ordered.to_csv(index=False, lineterminator="\n").encode("utf-8")


def content_sha256(frame: pd.DataFrame) -> str:
    """sha256 of `normalised_csv`: the same for the CSV mirror and the official .xls."""
    return hashlib.sha256(normalised_csv(frame)).hexdigest()


def _read_raw(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise DatasetError(path, [f"no such file: {path}"])
    try:
        if path.suffix.lower() in _EXCEL_SUFFIXES:
            # NOTE: the official .xls has two header rows: codes (X1..X23, Y), then names.
            with warnings.catch_warnings():
                # NOTE: pandas 3 deprecates its xlrd engine; xlrd is the pinned .xls reader.
                warnings.simplefilter("ignore", DeprecationWarning)
                frame = pd.read_excel(path, header=None, dtype=object, engine="xlrd")
            header_row = next(
                (i for i in range(min(3, len(frame))) if str(frame.iat[i, 0]).strip() == ID_FIELD),
                None,
            )
            if header_row is None:
                raise DatasetError(
                    path,
                    [
                        f"no header row starting with {ID_FIELD!r} in the first "
                        "3 rows of the spreadsheet"
                    ],
                )
            names = [str(name).strip() for name in frame.iloc[header_row]]
            frame = frame.iloc[header_row + 1 :].reset_index(drop=True)
            frame.columns = pd.Index(names)
            return frame
        return pd.read_csv(path, dtype=object, skipinitialspace=True)
    except DatasetError:
        raise
    except Exception as exc:  # NOTE: pandas/xlrd raise many types for unreadable files
        raise DatasetError(path, [f"cannot read as {path.suffix or 'CSV'}: {exc}"]) from exc


def _show(value: object) -> str:
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return f"{float(value):.15g}"
    return repr(value)


def _examples(ids: pd.Series, values: pd.Series, mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)[:_MAX_EXAMPLES]
    shown = ", ".join(
        f"row {row + 1} (ID {ids.iat[row]}): {_show(values.iat[row])}" for row in rows
    )
    return f"e.g. {shown}"


def validate_frame(
    raw: pd.DataFrame, path: Path | str = "<frame>", *, expect_full: bool = False
) -> pd.DataFrame:
    """Check columns, types, missing values, ranges and size; return the normalised frame.

    The result has exactly COLUMNS, sorted by ID, whole-number columns as int64.
    """
    import pandas as pd

    frame = raw.rename(columns={alias: LABEL_FIELD for alias in LABEL_ALIASES})
    frame.columns = pd.Index([str(c).strip() for c in frame.columns])
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(path, [f"missing column(s): {', '.join(missing)}"])
    duplicated = sorted(
        {c for c in frame.columns if c in COLUMNS and list(frame.columns).count(c) > 1}
    )
    if duplicated:
        raise DatasetError(path, [f"duplicated column(s): {', '.join(duplicated)}"])
    frame = frame.loc[:, list(COLUMNS)].reset_index(drop=True)

    problems: list[str] = []
    ids = frame[ID_FIELD].astype(str)
    numeric: dict[str, pd.Series] = {}
    for column in COLUMNS:
        values = frame[column]
        blank = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        if blank.any():
            problems.append(
                f"column {column}: {int(blank.sum())} missing value(s), "
                + _examples(ids, values, blank)
            )
            continue
        converted = pd.to_numeric(values, errors="coerce")
        not_number = converted.isna().to_numpy()
        if not_number.any():
            problems.append(
                f"column {column}: {int(not_number.sum())} value(s) not a number, "
                + _examples(ids, values, not_number)
            )
            continue
        as_float = converted.astype("float64")
        not_finite = ~np.isfinite(as_float.to_numpy())
        if not_finite.any():
            problems.append(
                f"column {column}: {int(not_finite.sum())} non-finite value(s), "
                + _examples(ids, values, not_finite)
            )
            continue
        numeric[column] = as_float

    for column, values in numeric.items():
        array = values.to_numpy()
        spec = FEATURE_SPECS.get(column)
        whole = column in (ID_FIELD, LABEL_FIELD) or (spec is not None and spec.integer)
        if whole:
            fractional = array != np.floor(array)
            if fractional.any():
                problems.append(
                    f"column {column}: {int(fractional.sum())} value(s) not a whole "
                    "number, " + _examples(ids, values, fractional)
                )
                continue
        if spec is not None:
            low, high = spec.minimum, spec.maximum
        elif column == LABEL_FIELD:
            low, high = 0, 1
        else:
            low, high = 0, np.inf
        outside = (array < low) | (array > high)
        if outside.any():
            problems.append(
                f"column {column}: {int(outside.sum())} value(s) outside "
                f"[{low:g}, {high:g}], " + _examples(ids, values, outside)
            )

    if ID_FIELD in numeric:
        duplicate_ids = numeric[ID_FIELD].duplicated(keep=False).to_numpy()
        if duplicate_ids.any():
            problems.append(
                f"column {ID_FIELD}: {int(duplicate_ids.sum())} rows share an ID, "
                + _examples(ids, frame[ID_FIELD], duplicate_ids)
            )
    if expect_full and len(frame) != FULL_ROWS:
        problems.append(f"expected the full data set of {FULL_ROWS} rows, found {len(frame)}")
    if not len(frame):
        problems.append("no data rows")
    if problems:
        raise DatasetError(path, problems)

    normalised = pd.DataFrame(
        {
            column: (values.astype("int64") if (values == np.floor(values)).all() else values)
            for column, values in numeric.items()
        }
    )
    return normalised.sort_values(ID_FIELD, kind="stable").reset_index(drop=True)


def load_dataset(path: Path | str, *, expect_full: bool = False) -> pd.DataFrame:
    """Read and validate the UCI data (.csv common layout or official .xls); raise DatasetError."""
    path = Path(path)
    return validate_frame(_read_raw(path), path, expect_full=expect_full)


def summarise(path: Path | str, *, expect_full: bool = False) -> DatasetSummary:
    """Load, validate and summarise a data file (rows, default rate, digests)."""
    path = Path(path)
    frame = load_dataset(path, expect_full=expect_full)
    return DatasetSummary(
        path=path,
        file_format="xls" if path.suffix.lower() in _EXCEL_SUFFIXES else "csv",
        rows=len(frame),
        defaults=int(frame[LABEL_FIELD].sum()),
        file_sha256=file_sha256(path),
        content_sha256=content_sha256(frame),
    )
