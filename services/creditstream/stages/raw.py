"""Raw entry of the staged pipeline: CSV rows exactly as the file holds them (strings)."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class RawDataError(ValueError):
    """The raw file is not a CSV with a header row."""


def raw_rows(path: Path, limit: int | None = None) -> Iterator[dict[str, str]]:
    """Each data row as {column: text}; nothing parsed, cleaned or dropped (label included).

    NOTE: the data set's quirks (EDUCATION 0/5/6, MARRIAGE 0, PAY_x -2) reach the preprocess
    stage as they are; that stage coerces and validates them like any other value.
    """
    if path.suffix.lower() != ".csv":
        raise RawDataError(f"{path}: the staged pipeline's raw entry reads CSV files")
    # NOTE: as a bank exports it, and as the fused loader reads it: a UTF-8 BOM (Excel's
    # "CSV UTF-8") and spaces after the commas are not part of the names or values.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if not reader.fieldnames:
            raise RawDataError(f"{path}: no header row")
        rows: Iterator[dict[str, str]] = iter(reader)
        if limit is not None:
            rows = itertools.islice(rows, limit)
        for row in rows:
            yield {key.strip(): value for key, value in row.items() if key is not None}


def count_rows(path: Path, limit: int | None = None) -> int:
    """Rows raw_rows would yield."""
    return sum(1 for _ in raw_rows(path, limit))


def as_raw(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """Records (e.g. SYNTHETIC ones) as a CSV export would carry them: every value a string."""
    for record in records:
        yield {key: str(value) for key, value in record.items()}
