"""Finalize internals: fast tar headers, part indexes, background hash/fsync, crashes mid-finalize."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import polars as pl
import pytest

from mmprep import Context, UnitInfo
from mmprep_webdataset import WebDatasetWriter
from mmprep_webdataset import _tar
from mmprep_webdataset._tar import _tarfile_header, header, scan_samples

from .conftest import jpeg, read_wds, tar_files


def test_fast_header_is_tarfiles_header():
    names = ["a.jpg", "x" * 100, "x" * 99 + ".", "k-1_2.latents", "a+b.txt", "000000001.jpg", "..", "x" * 101, "é.txt", "a/b.txt", "a b.txt"]
    sizes = [0, 1, 511, 512, 50_000, 8**11 - 1, 8**11, 2**40]
    for n in names:
        for z in sizes:
            assert header(n, z) == _tarfile_header(n, z), (n, z)
    rng = random.Random(0)
    for _ in range(500):
        n = "".join(rng.choice("abcXYZ019_-.+") for _ in range(rng.randint(1, 100)))
        z = rng.randrange(0, 8**11)
        assert header(n, z) == _tarfile_header(n, z), (n, z)


def _frame(n: int, start: int = 0, long_keys: bool = False) -> pl.DataFrame:
    keys = [("k" * 120 if long_keys and i % 3 == 0 else "k") + f"{i:05d}" for i in range(start, start + n)]
    return pl.DataFrame(
        {"key": keys, "caption": [f"caption {i}" for i in range(start, start + n)], "image_bytes": [jpeg(i % 20) for i in range(start, start + n)]}
    )


def _write_units(root: Path, sizes: list[int], long_keys: bool = False, **opts) -> tuple[WebDatasetWriter, list[dict]]:
    """write_unit per unit into its own staging dir, then move the entries into root (as the engine does)."""
    w = WebDatasetWriter(WebDatasetWriter.Options(path="w", **opts), Context())
    root.mkdir(parents=True, exist_ok=True)
    records, start = [], 0
    for i, n in enumerate(sizes):
        df = _frame(n, start, long_keys)
        start += n
        staging = root.parent / f"staging-{root.name}-{i}"
        st = w.write_unit(df, UnitInfo(f"u{i:03d}", i, n), staging)
        if staging.exists():
            for e in staging.iterdir():
                os.replace(e, root / e.name)
            staging.rmdir()
        records.append({"unit": f"u{i:03d}", "index": i, "rows": n, "stats": st})
    return w, records


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")}


SIZES = [7, 0, 11, 3, 9]


@pytest.mark.parametrize("long_keys", [False, True])
def test_part_index_used_and_scan_fallback_gives_same_bytes(tmp_path, long_keys, monkeypatch):
    w, recs = _write_units(tmp_path / "a", SIZES, long_keys, samples_per_shard=4, keep_parts=True)
    idx = json.loads((tmp_path / "a" / ".part-u000.json").read_text())
    assert idx["keys"][:2] == [("k" * 120 if long_keys else "k") + "00000", "k00001"] and idx["starts"][0] == 0
    scans = []
    real_scan = _tar.scan_samples
    import mmprep_webdataset.writer as wmod

    monkeypatch.setattr(wmod, "scan_samples", lambda *a, **k: scans.append(a) or real_scan(*a, **k))
    info = w.finalize(tmp_path / "a", recs, {})
    assert scans == []  # every part came with a usable index: no header scan
    ref = _digests(tmp_path / "a")
    assert info["samples"] == sum(SIZES) and info["shards"] == 8
    got = read_wds(tar_files(tmp_path / "a"))
    assert [s["__key__"] for s in got] == _frame(sum(SIZES), 0, long_keys)["key"].to_list()
    assert [s["txt"] for s in got] == [f"caption {i}".encode() for i in range(sum(SIZES))]
    assert [len(tarfile.open(p).getnames()) for p in tar_files(tmp_path / "a")] == [8] * 7 + [4]

    # the same parts without an index, with a stale one (wrong offsets) and with garbage: scanned instead
    w2, recs2 = _write_units(tmp_path / "b", SIZES, long_keys, samples_per_shard=4)
    (tmp_path / "b" / ".part-u000.json").unlink()
    bad = json.loads((tmp_path / "b" / ".part-u002.json").read_text())
    bad["starts"][3] += 512
    (tmp_path / "b" / ".part-u002.json").write_text(json.dumps(bad))
    (tmp_path / "b" / ".part-u003.json").write_text("{not json")
    w2.finalize(tmp_path / "b", recs2, {})
    assert len(scans) == 3
    assert _digests(tmp_path / "b") == ref
    assert not list((tmp_path / "b").glob(".part-*"))  # parts and their indexes removed
    assert w2.verify(tmp_path / "b", {"totals": {"written": sum(SIZES)}}) == []


def test_fsync_option_same_bytes(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(_tar.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    w, recs = _write_units(tmp_path / "a", SIZES, samples_per_shard=5)
    w.finalize(tmp_path / "a", recs, {})
    n_default = len(calls)
    assert n_default >= 6  # 6 shards, plus shards.json
    calls.clear()
    w2, recs2 = _write_units(tmp_path / "b", SIZES, samples_per_shard=5, fsync=False)
    w2.finalize(tmp_path / "b", recs2, {})
    assert len(calls) == n_default - 6  # only the small index files
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_failure_mid_finalize_leaves_only_complete_shards(tmp_path, monkeypatch):
    w, recs = _write_units(tmp_path / "ref", SIZES, samples_per_shard=3)
    w.finalize(tmp_path / "ref", recs, {})
    ref = _digests(tmp_path / "ref")

    w, recs = _write_units(tmp_path / "o", SIZES, samples_per_shard=3)
    real = _tar.ShardFile.copy_from
    n = {"calls": 0}

    def failing(self, fd, start, end):
        n["calls"] += 1
        if n["calls"] == 6:
            real(self, fd, start, start + (end - start) // 2)  # half a run written, then the "crash"
            raise OSError("disk full")
        return real(self, fd, start, end)

    monkeypatch.setattr(_tar.ShardFile, "copy_from", failing)
    with pytest.raises(OSError, match="disk full"):
        w.finalize(tmp_path / "o", recs, {})
    root = tmp_path / "o"
    visible = tar_files(root)
    assert visible and not (root / "shards.json").exists()
    for p in visible:  # every visible shard is complete and equal to the reference
        with open(p, "rb") as f:
            assert scan_samples(f, str(p))[1] is None
        assert hashlib.sha256(p.read_bytes()).hexdigest() == ref[p.name]
    assert not list(root.glob(".*.tmp-*"))  # temp files of the unfinished shards removed
    assert len(list(root.glob(".part-*.tar"))) == 4  # parts kept for the rerun
    monkeypatch.setattr(_tar.ShardFile, "copy_from", real)
    w.finalize(root, recs, {})
    assert _digests(root) == ref


_KILL_SCRIPT = r"""
import json, os, sys, time
from pathlib import Path
import mmprep_webdataset._tar as t
from mmprep import Context
from mmprep_webdataset import WebDatasetWriter
real = os.fsync
def slow(fd):
    time.sleep(0.2)
    real(fd)
t.os.fsync = slow
root = Path(sys.argv[1])
recs = json.loads(Path(sys.argv[2]).read_text())
w = WebDatasetWriter(WebDatasetWriter.Options(path="w", samples_per_shard=3), Context())
w.finalize(root, recs, {})
"""


def test_kill9_mid_finalize_then_rerun(tmp_path):
    w, recs = _write_units(tmp_path / "ref", SIZES, samples_per_shard=3)
    w.finalize(tmp_path / "ref", recs, {})
    ref = _digests(tmp_path / "ref")

    w, recs = _write_units(tmp_path / "o", SIZES, samples_per_shard=3)
    root = tmp_path / "o"
    (tmp_path / "recs.json").write_text(json.dumps(recs))
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(root), str(tmp_path / "recs.json")], start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(tar_files(root)) < 2 and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "finalize ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    visible = tar_files(root)
    assert 2 <= len(visible) < len(ref) - 1 and not (root / "shards.json").exists()
    for p in visible:
        with open(p, "rb") as f:
            assert scan_samples(f, str(p))[1] is None, p
        assert hashlib.sha256(p.read_bytes()).hexdigest() == ref[p.name]
    w.finalize(root, recs, {})
    assert _digests(root) == ref
    assert not list(root.glob(".*"))  # no temp file, part or part index left
