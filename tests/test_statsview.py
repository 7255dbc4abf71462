"""The stats table's rows from two samples: rates, hit ratios, files that come and go, a restarted mount."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from rangefs import statsview
from rangefs.statsview import TOTAL, Sample


def _stats(total: dict[str, int], *files: dict[str, Any]) -> dict[str, Any]:
    return {"traffic": total, "busiest_files": list(files), "files": 2, "files_failed": 0, "open_handles": 1}


def test_first_sample_has_counts_but_no_rates() -> None:
    current = Sample(_stats({"bytes_served": 400, "bytes_hit": 100, "requests": 3, "read_errors": 1}), 10.0)
    (total,) = statsview.rows(None, current)
    assert (total.name, total.bytes_served, total.requests, total.errors) == (TOTAL, 400, 3, 1)
    assert total.hit_ratio == 0.25
    assert total.served_per_second is None and total.fetched_per_second is None


def test_rates_are_the_growth_between_samples_over_the_time_between_them() -> None:
    a = {"path": "a.bin", "bytes_served": 1000, "bytes_fetched": 4096}
    previous = Sample(_stats({"bytes_served": 1000, "bytes_fetched": 4096}, a), 10.0)
    a_now = {**a, "bytes_served": 3000, "bytes_fetched": 8192, "bytes_in_flight": 512}
    b_now = {"path": "b.bin", "bytes_served": 10}
    current = Sample(_stats({"bytes_served": 3010, "bytes_fetched": 8192}, a_now, b_now), 12.0)
    total, first, second = statsview.rows(previous, current)
    assert (total.served_per_second, total.fetched_per_second) == (1005.0, 2048.0)
    assert (first.name, first.served_per_second, first.fetched_per_second) == ("a.bin", 1000.0, 2048.0)
    assert first.bytes_in_flight == 512
    assert second.name == "b.bin" and second.served_per_second is None  # not in the previous sample
    assert second.hit_ratio == 0.0


def test_a_counter_that_went_down_has_no_rate_and_nothing_read_has_no_hit_ratio() -> None:
    previous = Sample(_stats({"bytes_served": 5000, "bytes_fetched": 10}), 1.0)
    current = Sample(_stats({"bytes_served": 0, "bytes_fetched": 10}), 2.0)  # the mount was restarted
    (total,) = statsview.rows(previous, current)
    assert total.served_per_second is None and total.fetched_per_second == 0.0
    assert total.hit_ratio is None
    assert statsview.rows(previous, Sample(previous.stats, 1.0))[0].served_per_second is None  # no time passed


def test_the_table_shows_every_row_with_units() -> None:
    a = {"path": "videos/talk.mp4", "bytes_served": 3 * 1024 * 1024, "bytes_fetched": 4 * 1024 * 1024}
    previous = Sample(_stats({"bytes_served": 0}), 0.0)
    current = Sample(_stats({"bytes_served": 3 * 1024 * 1024, "bytes_fetched": 4 * 1024 * 1024}, a), 1.0)
    console = Console(width=160, record=True)
    console.print(statsview.table(statsview.rows(previous, current)))
    text = console.export_text()
    assert "videos/talk.mp4" in text and "3.0 MiB/s" in text and "4.0 MiB" in text
    assert statsview.summary(current.stats) == "2 files (0 failed), 1 open | disk cache 0 B of no limit"
