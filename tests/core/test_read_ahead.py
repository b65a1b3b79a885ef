"""run.read_ahead: units that run in the driver read the next unit's input in a thread while the
current one is processed; outputs and accounting are the same, a failed read fails its own unit."""

from __future__ import annotations

import threading

import polars as pl
import pytest

from mmprep import Pipeline
from mmprep.engine import UnitRunner


def _doc(ahead: int) -> dict:
    return {
        "datasets": [{"name": "t", "source": {"type": "parquet", "path": "in.parquet"}, "key": {"column": "id"}}],
        "write": [{"type": "parquet", "path": "pq"}],
        "run": {"samples_per_unit": 10, "read_ahead": ahead},
    }


@pytest.fixture
def data(tmp_path):
    pl.DataFrame({"id": [f"r{i:03d}" for i in range(55)], "jpg": [bytes([i]) * (i + 1) for i in range(55)],
                  "caption": [f"c{i}" for i in range(55)]}).write_parquet(tmp_path / "in.parquet")
    return tmp_path


def _log_reads_and_commits(monkeypatch, ahead: int) -> list[tuple[str, int, str]]:
    """Log (read|commit, unit index, thread). With read-ahead, the commit of unit k waits until
    the read of unit k + 1 has started: it only can if that read runs concurrently."""
    events: list[tuple[str, int, str]] = []
    started = [threading.Event() for _ in range(6)]
    read, commit = UnitRunner.read, UnitRunner.commit

    def logged_read(self, unit):
        events.append(("read", unit["index"], threading.current_thread().name))
        started[unit["index"]].set()
        return read(self, unit)

    def logged_commit(self, unit_id, staging, record):
        k = record["index"]
        if ahead and k + 1 < 6:
            assert started[k + 1].wait(10), f"unit {k + 1} was not being read while unit {k} ran"
        events.append(("commit", k, threading.current_thread().name))
        return commit(self, unit_id, staging, record)

    monkeypatch.setattr(UnitRunner, "read", logged_read)
    monkeypatch.setattr(UnitRunner, "commit", logged_commit)
    return events


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_outputs_are_the_same_and_reads_run_ahead(data, run_pipeline, monkeypatch, ahead):
    events = _log_reads_and_commits(monkeypatch, ahead)
    res = run_pipeline(_doc(ahead), out=data / f"out{ahead}", workers=1)
    assert res.manifest["totals"]["written"] == 55
    got = pl.read_parquet(sorted((data / f"out{ahead}" / "pq").glob("*.parquet"))).sort("key")
    want = pl.read_parquet(data / "in.parquet").sort("id")
    assert got["jpg"].to_list() == want["jpg"].to_list() and got["key"].to_list() == want["id"].to_list()
    assert [k for kind, k, _ in events if kind == "commit"] == list(range(6))
    assert [k for kind, k, _ in events if kind == "read"] == list(range(6))  # in order, each once
    reads = {t for kind, _, t in events if kind == "read"}
    if ahead == 0:  # read, commit, read, commit ... all in the driver
        assert reads == {"MainThread"} and [kind for kind, _, _ in events] == ["read", "commit"] * 6
    else:
        assert all(t.startswith("mmprep-read-ahead") for t in reads)
        for k in range(6):  # never more than `ahead` units read beyond the one being processed
            before = events[: events.index(("commit", k, "MainThread"))]
            assert sum(1 for e in before if e[0] == "read") <= k + 1 + ahead


def test_a_failed_read_fails_only_its_unit(data, monkeypatch):
    read = UnitRunner.read

    def flaky(self, unit):
        if unit["index"] == 2:
            raise OSError("disk went away")
        return read(self, unit)

    monkeypatch.setattr(UnitRunner, "read", flaky)
    res = Pipeline.from_dict(_doc(1), base_dir=data).run(out=str(data / "out"), workers=1, quiet=True)
    assert list(res.failed.values()) == ["OSError: disk went away"]
    done = sorted(p.name for p in (data / "out" / "_mmprep" / "units").glob("*.json"))
    assert len([n for n in done if not n.endswith((".failed.json", ".intent.json"))]) == 5
    # the rerun reads and writes the missing unit only
    monkeypatch.setattr(UnitRunner, "read", read)
    again = Pipeline.from_dict(_doc(1), base_dir=data).run(out=str(data / "out"), workers=1, quiet=True)
    assert again.ok and again.manifest["totals"]["written"] == 55
