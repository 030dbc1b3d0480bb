"""The demo's load profile: burst sizes, rate, and the row slices each burst publishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditstream.demo.load import (
    DEFAULT_BURST_RATE,
    DataChoice,
    LoadProfile,
    burst_row_ranges,
    describe_load,
    describe_rows,
    plan_bursts,
)
from creditstream.settings import Settings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    ("rows", "bursts", "expected"),
    [
        pytest.param(
            30_000, [15_000, 15_000], [[(0, 15_000)], [(15_000, 30_000)]], id="two-halves"
        ),
        pytest.param(30_000, [5_000, 5_000], [[(0, 5_000)], [(5_000, 10_000)]], id="quick"),
        pytest.param(
            30_000,
            [20_000, 20_000],
            [[(0, 20_000)], [(20_000, 30_000), (0, 10_000)]],
            id="wraps-around",
        ),
        pytest.param(10, [25], [[(0, 10), (0, 10), (0, 5)]], id="smaller-than-burst"),
        pytest.param(10, [10, 3], [[(0, 10)], [(0, 3)]], id="exact-end-then-restart"),
    ],
)
def test_burst_row_ranges(
    rows: int, bursts: list[int], expected: list[list[tuple[int, int]]]
) -> None:
    ranges = burst_row_ranges(rows, bursts)
    assert ranges == expected
    assert [sum(end - start for start, end in parts) for parts in ranges] == bursts


def test_burst_row_ranges_refuses_an_empty_data_set() -> None:
    with pytest.raises(ValueError, match="no rows"):
        burst_row_ranges(0, [10])


def test_describe_rows_is_one_based_and_inclusive() -> None:
    assert describe_rows([(15_000, 30_000)]) == "rows 15,001-30,000"
    assert describe_rows([(20_000, 30_000), (0, 10_000)]) == "rows 20,001-30,000 + 1-10,000"


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        pytest.param(None, DEFAULT_BURST_RATE, id="default"),
        pytest.param(1200.0, 1200.0, id="given"),
    ],
)
def test_profile_rate(rate: float | None, expected: float) -> None:
    assert LoadProfile(rate=rate).records_per_s == expected


def test_synthetic_plan_has_no_files_and_waits_the_pause(tmp_path: Path) -> None:
    profile = LoadProfile(first_burst=100, pause_s=7, second_burst=50, rate=20)
    plan = plan_bursts(profile, DataChoice("synthetic", None, "SYNTHETIC"), tmp_path / "records")
    assert [(b.name, b.records, b.delay_s, b.data) for b in plan] == [
        ("burst 1", 100, 0.0, None),
        ("burst 2", 50, 7, None),
    ]
    assert not (tmp_path / "records").exists()
    assert describe_load(profile, plan) == (
        "burst 1: 100 (synthetic) at 20/s -> pause 7 s -> burst 2: 50 (synthetic) at 20/s"
    )


def test_no_second_burst() -> None:
    assert LoadProfile(first_burst=10, second_burst=0).bursts == [10]


def test_real_data_bursts_cover_every_row_once(tmp_path: Path) -> None:
    settings = Settings()
    if not settings.data_path.is_file():
        pytest.skip(f"data set not found at {settings.data_path}")
    from creditstream.data.dataset import load_dataset

    full = load_dataset(settings.data_path)
    half = len(full) // 2
    profile = LoadProfile(first_burst=half, second_burst=len(full) - half)
    data = DataChoice("data set", settings.data_path, "real")
    plan = plan_bursts(profile, data, tmp_path / "records")
    assert [b.rows for b in plan] == [
        f"rows 1-{half:,}",
        f"rows {half + 1:,}-{len(full):,}",
    ]
    ids = []
    for burst in plan:
        assert burst.data is not None
        frame = load_dataset(burst.data)  # the producer validates it the same way
        assert len(frame) == burst.records
        ids.extend(frame["ID"].tolist())
    assert sorted(ids) == sorted(full["ID"].tolist())
