"""Execution: plan → work units → executor → atomic commit → finalize.

Layout of an output directory::

    OUT/
      <writer outputs>                     # each writer under OUT/<its path>
      _mmprep/
        run.json                           # config, its hash, input fingerprints, units
        plan.parquet                       # planned rows of table datasets (units slice it)
        units/<unit>.json                  # completion record (counts, rejections, seconds)
        units/<unit>.intent.json           # files being committed (crash recovery)
        units/<unit>.failed.json           # last failure of a unit (redone on rerun)
        status/<unit>.parquet              # per-sample status when run.status is on
        staging/                           # private per-attempt staging dirs
        manifest.json                      # written by finalize

A unit is complete iff its record exists. Its files are moved into place (atomic renames)
after its writers finished cleanly, and the record is written last; a crash in between
leaves an intent file, and the next run deletes what the intent lists before redoing the
unit. A killed run therefore never leaves a truncated visible file, and a rerun of the same
pipeline skips completed units.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from . import __version__
from .component import REJECT_MESSAGE, REJECT_REASON, Partition, Source, UnitInfo
from .config import Pipeline, build_pipeline, config_hash
from .errors import ConfigError, MmprepError, ResumeError, UnitError
from .plan import ROW, analyse, build_units, expand_dup, filter_schema_errors, sanitize_key_expr, table_frame
from .storage import is_local

log = logging.getLogger("mmprep")

META = "_mmprep"
RESERVED = (REJECT_REASON, REJECT_MESSAGE)


# -- small file helpers --------------------------------------------------------------
def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


# -- results ---------------------------------------------------------------------------
@dataclass
class RunResult:
    out: Path
    manifest: dict | None
    units_total: int
    units_done: int
    units_skipped: int
    failed: dict[str, str] = field(default_factory=dict)
    dry_run: dict | None = None
    remote: str | None = None  # the object-store URL mirrored from ``out`` (a work dir)

    @property
    def ok(self) -> bool:
        return not self.failed


# -- output directory / resume ----------------------------------------------------------
def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{p} added")
            elif k not in b:
                out.append(f"{p} removed")
            else:
                out.extend(_diff(a[k], b[k], p))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(_diff(x, y, f"{path}[{i}]"))
        return out
    if a != b:
        return [f"{path}: {json.dumps(a, default=str)[:80]} -> {json.dumps(b, default=str)[:80]}"]
    return []


def prepare_out(out: Path, pipeline: Pipeline, overwrite: bool) -> dict | None:
    """Check/clean the output dir; return the stored run.json when resuming, else None."""
    meta = out / META
    run_json = meta / "run.json"
    if out.exists() and any(out.iterdir()):
        if not meta.exists():
            raise ResumeError(
                f"{out} is not empty and holds no mmprep run (no {META}/); choose an empty or new output directory"
            )
        if overwrite:
            for child in out.iterdir():
                _remove(child)
            return None
        if run_json.exists():
            stored = read_json(run_json)
            if stored.get("config_hash") != pipeline.config_hash:
                changes = _diff(_hashed(stored.get("config", {})), _hashed(pipeline.doc))
                shown = "; ".join(changes[:8]) + (f"; ... ({len(changes)} changes)" if len(changes) > 8 else "")
                raise ResumeError(
                    f"{out} holds a run of a different pipeline (config hash {stored.get('config_hash')} != "
                    f"{pipeline.config_hash}): {shown or 'see run.json'}. Use --overwrite to replace it, or another --out"
                )
            _check_encoder_identities(pipeline, stored)
            return stored
    return None


def encoder_identities(pipeline: Pipeline) -> list[dict]:
    return [json.loads(json.dumps({"type": e.name, "identity": e.identity()}, default=str)) for e in pipeline.encoders]


def _check_encoder_identities(pipeline: Pipeline, stored: dict) -> None:
    """Outputs cached with other model weights are stale: refuse to resume into them."""
    old = stored.get("encoders")
    if old is None:
        return
    new = encoder_identities(pipeline)
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            changes = _diff(a["identity"], b["identity"])
            raise ResumeError(
                f"encode[{i}] ({b['type']}): the encoder's identity changed since this output was made "
                f"({'; '.join(changes[:4])}); its cached outputs would be stale. Use --overwrite, or another --out"
            )


def _hashed(doc: dict) -> dict:
    from .config import RUNTIME_ONLY

    d = json.loads(json.dumps(doc, default=str))
    for k in RUNTIME_ONLY:
        d.get("run", {}).pop(k, None)
    return d


def recover(out: Path) -> None:
    """Undo half-committed units (intent without record) and drop stale staging dirs."""
    meta = out / META
    units = meta / "units"
    if units.exists():
        for intent in units.glob("*.intent.json"):
            unit_id = intent.name[: -len(".intent.json")]
            if not (units / f"{unit_id}.json").exists():
                try:
                    entries = read_json(intent)["entries"]
                except (OSError, ValueError, KeyError):
                    entries = []
                for rel in entries:
                    _remove(out / rel)
                _prune_empty_dirs(out, entries)
            intent.unlink(missing_ok=True)
    staging = meta / "staging"
    if staging.exists():
        for d in staging.iterdir():
            pid = d.name.rsplit("-", 1)[-1]
            host = d.name.split("@", 1)[-1].rsplit("-", 1)[0] if "@" in d.name else ""
            alive = host == socket.gethostname() and pid.isdigit() and _pid_alive(int(pid))
            if not alive:
                _remove(d)


def _prune_empty_dirs(out: Path, entries: list[str]) -> None:
    """Remove the directories a half-committed unit left empty (e.g. an MDS unit directory
    whose files recovery just deleted), deepest first; a directory that still holds another
    unit's files stays (rmdir only removes empty ones)."""
    dirs = {p for rel in entries for p in Path(rel).parents if p != Path(".")}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            (out / d).rmdir()
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


# -- planning ----------------------------------------------------------------------------
def can_resume(out: Path, stored: dict | None) -> bool:
    if stored is None:
        return False
    return (out / META / "plan.parquet").exists() or not any(u["kind"] == "table" for u in stored["units"])


def make_plan(pipeline: Pipeline, out: Path, stored: dict | None, plans: list | None = None) -> dict:
    """Return run.json content (units etc.), reusing a stored plan when resuming."""
    meta = out / META
    plan_file = meta / "plan.parquet"
    if can_resume(out, stored):
        _check_fingerprints(pipeline, stored)
        return stored
    t0 = time.perf_counter()
    plans = plans if plans is not None else analyse(pipeline)
    units = build_units(plans, pipeline.run_options.samples_per_unit)
    frame = table_frame(plans)
    meta.mkdir(parents=True, exist_ok=True)
    if frame is not None:
        tmp = meta / f".plan.parquet.tmp-{os.getpid()}"
        rg = max(1, min(pipeline.run_options.samples_per_unit, 100_000))
        frame.sink_parquet(tmp, row_group_size=rg, compression="lz4")  # measured: zstd costs ~35% more here
        os.replace(tmp, plan_file)
    run_json = {
        "mmprep_version": __version__,
        "config": pipeline.doc,
        "config_hash": pipeline.config_hash,
        "source": pipeline.source_path,
        "base_dir": str(pipeline.base_dir),
        "datasets": [dp.summary() for dp in plans],
        "fingerprints": {dp.ds.name: dp.fingerprint for dp in plans},
        "encoders": encoder_identities(pipeline),
        "units": units,
        "plan_seconds": round(time.perf_counter() - t0, 3),
        "created_at": time.time(),
    }
    write_json_atomic(meta / "run.json", run_json)
    return run_json


def _check_fingerprints(pipeline: Pipeline, stored: dict) -> None:
    for ds in pipeline.datasets:
        old = stored.get("fingerprints", {}).get(ds.name)
        if old is None:
            continue
        new = json.loads(json.dumps(ds.source.fingerprint(), default=str))
        if new != old:
            raise ResumeError(
                f"the input of dataset {ds.name!r} changed since the stored plan was made; "
                f"use --overwrite to plan again from the new input"
            )


# -- unit execution ----------------------------------------------------------------------
def bind_out(pipeline: Pipeline, out: Path) -> None:
    """Tell every component where the run's output directory is (``context.out``)."""
    comps = [d.source for d in pipeline.datasets] + [f for d in pipeline.datasets for f in d.filters]
    comps += [*pipeline.formatters, *pipeline.encoders, *pipeline.writers]
    for c in comps:
        c.context.out = out
    if pipeline.media is not None and hasattr(pipeline.media, "context"):
        pipeline.media.context.out = out


class UnitRunner:
    """Runs units in one process; components (and encoder models) are set up once."""

    def __init__(self, pipeline: Pipeline, out: Path, device: str | None = None, remote: Any = None):
        bind_out(pipeline, out)
        self.p = pipeline
        self.out = out
        self.remote = remote  # RemoteOut: each committed unit is uploaded (mmprep.remote)
        self.meta = out / META
        self.device = device or pipeline.run_options.device
        self._encoders_ready = False
        self.max_examples = pipeline.run_options.max_examples
        self.status = bool(pipeline.doc.get("run", {}).get("status", False))
        self._deferred: dict[str, dict] | None = None

    def _setup_encoders(self) -> None:
        if self._encoders_ready:
            return
        for enc in self.p.encoders:
            enc.setup(self.device)
        self._encoders_ready = True

    #: ``(i, frame) -> (frame, stats delta)`` running encoder i elsewhere (the Ray executor's
    #: encoder actors, which keep the models loaded on their GPUs); None: in this process.
    encode_remote: Any = None

    def encode_local(self, i: int, df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
        """Encoder i on ``df`` in this process; returns the frame and the encoder's stats delta."""
        self._setup_encoders()
        e = self.p.encoders[i]
        before = dict(e.stats()) if hasattr(e, "stats") else {}
        df = e.encode(df)
        after = e.stats() if hasattr(e, "stats") else {}
        return df, {k: v - before.get(k, 0) for k, v in after.items()}

    # reading ------------------------------------------------------------------------------
    def _take_plan(self, dataset: str) -> dict | None:
        """The stored plan's deferred columns of ``dataset`` (see :func:`plan._plan_table`)."""
        if self._deferred is None:
            run = json.loads((self.meta / "run.json").read_text())
            self._deferred = {d["name"]: d for d in run["datasets"] if d.get("deferred")}
        return self._deferred.get(dataset)

    def read(self, unit: dict) -> tuple[pl.DataFrame, dict[str, int], dict[str, list]]:
        if unit["kind"] == "table":
            df = pl.scan_parquet(self.meta / "plan.parquet").slice(unit["offset"], unit["rows"]).collect()
            if ROW in df.columns:
                d = self._take_plan(unit["dataset"])
                if d is not None:
                    ds = next(x for x in self.p.datasets if x.name == unit["dataset"])
                    taken = ds.source.take(d["deferred"], df[ROW].to_numpy(), d["take_state"])
                    df = df.with_columns(taken[c].cast(df.schema[c]) for c in d["deferred"])
                df = df.drop(ROW)
            return df, {}, {}
        ds = next(d for d in self.p.datasets if d.name == unit["dataset"])
        pinfo = unit["partition"]
        data = ds.source.read_partition(Partition(id=pinfo["id"], info=pinfo["info"], rows=pinfo["rows"]))
        df = data.frame
        rejected = dict(data.rejected)
        examples = {k: list(v)[: self.max_examples] for k, v in data.examples.items()}
        if "key" not in df.columns:
            base = f"{ds.slug}-{pinfo['id']}"
            df = df.with_columns(
                pl.format("{}-{}", pl.lit(base), pl.int_range(pl.len()).cast(pl.String).str.zfill(6)).alias("key")
            )
        df = df.with_columns(sanitize_key_expr(pl.col("key")).alias("key"), pl.lit(ds.name).alias("dataset"))
        errs = filter_schema_errors(self.p.datasets.index(ds), ds, df.schema)
        if errs and df.height:
            raise UnitError("; ".join(errs))
        for f in ds.filters:
            if not df.height:
                break
            keep = df.select(f.expression(df.schema).fill_null(False)).to_series()
            n = int((~keep).sum())
            if n:
                rejected[f.reason] = rejected.get(f.reason, 0) + n
                examples.setdefault(f.reason, []).extend(
                    {"key": k, "message": f"rejected by filter {f.name}"} for k in df.filter(~keep)["key"].head(self.max_examples)
                )
                df = df.filter(keep)
        s = ds.sampling
        if s.hash_fraction is not None and s.hash_fraction < 1 and df.height:
            from .hashing import unit_floats

            keep = pl.Series(unit_floats(df["key"], self.p.run_options.seed) < s.hash_fraction)
            rejected["sampled_out"] = rejected.get("sampled_out", 0) + int((~keep).sum())
            df = df.filter(keep)
        if s.dup > 1 and df.height:
            df = expand_dup(df, s.dup)
        return df, rejected, examples

    # stages -------------------------------------------------------------------------------
    def _split(self, df: pl.DataFrame, rejected: dict, examples: dict, statuses: list) -> pl.DataFrame:
        if REJECT_REASON not in df.columns:
            return df
        bad = df.filter(pl.col(REJECT_REASON).is_not_null())
        if bad.height:
            msg = pl.col(REJECT_MESSAGE) if REJECT_MESSAGE in bad.columns else pl.lit(None, dtype=pl.String)
            info = bad.select(pl.col("key"), pl.col(REJECT_REASON).alias("reason"), msg.cast(pl.String).alias("message"))
            for reason, n in info.group_by("reason").len().iter_rows():
                rejected[reason] = rejected.get(reason, 0) + n
            for reason, grp in info.group_by("reason", maintain_order=True):
                ex = examples.setdefault(reason[0], [])
                room = self.max_examples - len(ex)
                if room > 0:
                    ex.extend(grp.select("key", "message").head(room).to_dicts())
            if self.status:
                statuses.append(info.with_columns(pl.lit("rejected").alias("status")))
        good = df.filter(pl.col(REJECT_REASON).is_null())
        return good.drop([c for c in RESERVED if c in good.columns])

    def timed_read(self, unit: dict) -> tuple[tuple[pl.DataFrame, dict[str, int], dict[str, list]], float, float]:
        """:meth:`read` plus its wall-clock start and duration."""
        started, t0 = time.time(), time.perf_counter()
        return self.read(unit), started, time.perf_counter() - t0

    def read_ahead(self, units: list[dict], ahead: int) -> Iterator[tuple[dict, Any]]:
        """Each unit with its :meth:`timed_read` result (or the exception it raised), reading
        up to ``ahead`` units ahead in a thread while the caller processes the current one
        (polars and the sources' I/O release the GIL, so the read overlaps encoding and writing).
        The encoder models are set up here, once the first reads are under way, so loading
        them overlaps the first unit's read too."""
        if ahead <= 0:
            for u in units:
                yield u, None
            return
        it = iter(units)
        with ThreadPoolExecutor(1, thread_name_prefix="mmprep-read-ahead") as pool:
            pending = deque((u, pool.submit(self.timed_read, u)) for u in itertools.islice(it, ahead + 1))
            if pending and self.p.encoders and self.encode_remote is None:
                try:  # the models load while the first unit is read
                    self._setup_encoders()
                except Exception:  # raised again by run_unit, for each unit, as without read-ahead
                    pass
            while pending:
                u, fut = pending.popleft()
                try:
                    data = fut.result()
                except Exception as e:  # reported by the caller, for this unit
                    data = e
                yield u, data
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self.timed_read, nxt)))

    def run_unit(self, unit: dict, read: Any = None) -> dict:
        """Run one unit: read (unless ``read``, a :meth:`timed_read` result, is given), the
        stages, the writers, and commit."""
        if isinstance(read, BaseException):
            raise read
        (df, rejected, examples), started, read_s = read if read is not None else self.timed_read(unit)
        t0 = time.perf_counter() - read_s
        rows_in = df.height + sum(rejected.values())
        statuses: list[pl.DataFrame] = []
        timings: dict[str, float] = {"read": read_s}
        stages: list[tuple[str, Any]] = []
        if self.p.media is not None:
            stages.append(("media", self.p.media.process))
        stages += [(f"format:{f.name}", f.format) for f in self.p.formatters]
        enc_stats: list[dict[str, int]] = [{} for _ in self.p.encoders]

        def encode_stage(i: int):
            def fn(frame: pl.DataFrame) -> pl.DataFrame:
                frame, delta = (self.encode_remote or self.encode_local)(i, frame)
                for k, v in delta.items():
                    enc_stats[i][k] = enc_stats[i].get(k, 0) + v
                return frame

            return fn

        stages += [(f"encode:{e.name}", encode_stage(i)) for i, e in enumerate(self.p.encoders)]
        for name, fn in stages:
            if not df.height:
                break
            ts = time.perf_counter()
            df = self._split(fn(df), rejected, examples, statuses)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - ts
        df = df.drop([c for c in RESERVED if c in df.columns])

        staging = self.meta / "staging" / f"{unit['id']}@{socket.gethostname()}-{os.getpid()}"
        _remove(staging)
        info = UnitInfo(id=unit["id"], index=unit["index"], rows=df.height, datasets=[unit["dataset"]])
        writer_stats = []
        try:
            for i, w in enumerate(self.p.writers):
                ts = time.perf_counter()
                wdir = staging / f"w{i}"
                wdir.mkdir(parents=True)
                writer_stats.append(w.write_unit(df, info, wdir) or {})
                timings[f"write:{w.name}"] = time.perf_counter() - ts
            if self.status:
                sdir = staging / "status"
                sdir.mkdir(parents=True)
                ok = df.select("key", pl.lit(None, dtype=pl.String).alias("reason"), pl.lit(None, dtype=pl.String).alias("message"), pl.lit("written").alias("status"))
                pl.concat([ok, *statuses], how="diagonal_relaxed").write_parquet(sdir / f"{unit['id']}.parquet")
            record = {
                "id": unit["id"],
                "index": unit["index"],
                "dataset": unit["dataset"],
                "rows_in": rows_in,
                "rows_written": df.height,
                "rejected": dict(sorted(rejected.items())),
                "examples": examples,
                "writers": writer_stats,
                "encoder_stats": enc_stats,
                "timings": {k: round(v, 4) for k, v in timings.items()},
                "seconds": round(time.perf_counter() - t0, 4),
                "started_at": started,
                "finished_at": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            assert record["rows_in"] == record["rows_written"] + sum(rejected.values())
            self.commit(unit["id"], staging, record)
        finally:
            _remove(staging)
        return record

    def commit(self, unit_id: str, staging: Path, record: dict) -> None:
        pairs = [(staging / f"w{i}", self.out / getattr(w.options, "path", "")) for i, w in enumerate(self.p.writers)]
        pairs.append((staging / "status", self.meta / "status"))
        pairs = [(s, d) for s, d in pairs if s.exists()]
        # the intent lists every file this unit is about to make visible (leaf files, so a
        # directory shared with other units is never deleted wholesale during recovery)
        entries = [str((d / f.relative_to(s)).relative_to(self.out)) for s, d in pairs for f in sorted(s.rglob("*")) if not f.is_dir()]
        units = self.meta / "units"
        write_json_atomic(units / f"{unit_id}.intent.json", {"entries": entries})
        for s, d in pairs:
            _merge_move(s, d)
        if self.remote is not None:
            record["files"] = entries  # what the remote mirror uploads (and other machines pull)
        write_json_atomic(units / f"{unit_id}.json", record)
        (units / f"{unit_id}.intent.json").unlink(missing_ok=True)
        (units / f"{unit_id}.failed.json").unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.push_unit(self.out, unit_id, entries)


def _merge_move(src: Path, dst: Path) -> None:
    """Move src's entries into dst: a directory absent at dst appears whole (one rename);
    one that exists (another unit's, or created concurrently) is merged; files replace
    atomically."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if not target.exists():
                try:
                    os.rename(entry, target)
                    continue
                except OSError:  # appeared meanwhile (a concurrent commit): merge instead
                    pass
            _merge_move(entry, target)
        else:
            try:
                os.replace(entry, target)
            except FileNotFoundError:  # dst pruned meanwhile by another process's recovery
                dst.mkdir(parents=True, exist_ok=True)
                os.replace(entry, target)


# -- worker process ----------------------------------------------------------------------
_RUNNER: UnitRunner | None = None


def _worker_init(doc: dict, base_dir: str, source: str | None, out: str, device: str, counter, remote=None,
                 n_workers: int = 1) -> None:
    global _RUNNER
    idx = 0
    if counter is not None:
        with counter.get_lock():
            idx = counter.value
            counter.value += 1
    os.environ["MMPREP_WORKER_INDEX"] = str(idx)
    os.environ["MMPREP_LOCAL_WORKERS"] = str(n_workers)  # components size their thread pools by it
    pipeline = build_pipeline(doc, base_dir=Path(base_dir), source=source, interpolate_env=False)
    if pipeline.encoders:
        device = _device_for_worker(device, idx)
    _RUNNER = UnitRunner(pipeline, Path(out), device=device, remote=remote)


def _device_for_worker(device: str, idx: int) -> str:
    """One GPU per worker, round robin, when the device is 'auto' or 'cuda' and GPUs exist."""
    if device not in ("auto", "cuda"):
        return device
    try:
        import torch
    except ImportError:
        return "cpu"

    n = torch.cuda.device_count()
    if n == 0:
        return "cpu"
    return f"cuda:{idx % n}"


def _worker_run(unit: dict) -> dict:
    assert _RUNNER is not None
    return _RUNNER.run_unit(unit)


# -- progress ----------------------------------------------------------------------------
class Progress:
    def __init__(self, total_units: int, total_rows: int | None, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.units = 0
        self.rows = 0
        self.total_units = total_units
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_rows, unit="samples", desc=f"0/{total_units} units", dynamic_ncols=True)

    def update(self, record: dict) -> None:
        self.units += 1
        self.rows += record["rows_in"]
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_description(f"{self.units}/{self.total_units} units")
            self.bar.update(record["rows_in"])
            return
        now = time.perf_counter()
        if now - self.last >= 5 or self.units == self.total_units:
            self.last = now
            el = now - self.t0
            rate = self.rows / el if el > 0 else 0.0
            left = self.total_units - self.units
            eta = el / self.units * left if self.units else 0
            print(
                f"mmprep: {self.units}/{self.total_units} units, {self.rows} samples, {rate:.1f} samples/s, ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- shards / array mode ---------------------------------------------------------------
def shard_from_env() -> tuple[int, int] | None:
    for i_var, n_var in (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"), ("RANK", "WORLD_SIZE")):
        if i_var in os.environ and n_var in os.environ:
            i, n = int(os.environ[i_var]), int(os.environ[n_var])
            if i_var == "SLURM_ARRAY_TASK_ID" and "SLURM_ARRAY_TASK_MIN" in os.environ:
                i -= int(os.environ["SLURM_ARRAY_TASK_MIN"])
            return i, n
    return None


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected I/N, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard: need 0 <= I < N, got {text!r}")
    return i, n


# -- the run -----------------------------------------------------------------------------
def run(
    pipeline: Pipeline,
    out: str | Path | None = None,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool | None = None,
    dry_run_only: bool | str = False,
    quiet: bool = False,
    retry_failed: bool = False,
    finalize_when_done: bool = True,
) -> RunResult:
    """Plan, execute and finalize ``pipeline`` into ``out`` (see the module docstring)."""
    ro = pipeline.run_options
    out_s = out or ro.out
    if not out_s:
        raise ConfigError("run.out: no output directory (set run.out or pass --out)", pipeline.source_path)
    remote = None
    if not is_local(str(out_s)):  # an object store: run in a local work dir, mirror to it
        from .remote import RemoteOut, default_work_dir

        remote = RemoteOut(str(out_s), ro.storage_options)
        out_s = ro.work_dir or default_work_dir(remote.url)
    out = Path(str(out_s).removeprefix("file://")).expanduser()
    if not out.is_absolute():
        out = (Path.cwd() / out).resolve()
    if dry_run_only:
        from .dryrun import dry_run

        return RunResult(out, None, 0, 0, 0, dry_run=dry_run(pipeline, measure=dry_run_only == "measure"))
    workers = workers or ro.workers
    overwrite = ro.overwrite if overwrite is None else overwrite

    if remote is not None:
        out.mkdir(parents=True, exist_ok=True)
        remote.pull_state(out, pipeline.config_hash, overwrite)
    stored = prepare_out(out, pipeline, overwrite)
    # a fresh plan is analysed before anything is written: plan errors leave no output
    plans = None if can_resume(out, stored) else analyse(pipeline)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).mkdir(exist_ok=True)
    recover(out)
    run_json = make_plan(pipeline, out, stored, plans)
    units = run_json["units"]
    units_dir = out / META / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    if retry_failed:
        _reopen_retryable(out, units, remote)
    done_remote: set[str] = set()
    if remote is not None:
        remote.push_run(out)
        done_remote = remote.sync_units(out, units)
    if shard is None:
        shard = shard_from_env()
    mine = [u for u in units if shard is None or u["index"] % shard[1] == shard[0]]
    todo = [u for u in mine if u["id"] not in done_remote and not (units_dir / f"{u['id']}.json").exists()]
    skipped = len(mine) - len(todo)
    failed: dict[str, str] = {}

    total_rows = sum(u["rows"] or 0 for u in todo) if all(u["rows"] is not None for u in todo) else None
    progress = Progress(len(todo), total_rows, quiet)
    if not quiet and skipped:
        print(f"mmprep: resuming, {skipped} of {len(mine)} units already complete", file=sys.stderr)

    def on_fail(unit: dict, exc: BaseException, tb: str) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        failed[unit["id"]] = msg
        write_json_atomic(units_dir / f"{unit['id']}.failed.json", {"id": unit["id"], "error": msg, "traceback": tb, "at": time.time()})
        if quiet:
            log.error("unit %s failed: %s", unit["id"], msg)
        else:
            print(f"mmprep: unit {unit['id']} failed: {msg}", file=sys.stderr)

    try:
        if ro.executor == "ray":
            from .ray_executor import run_units_ray

            run_units_ray(pipeline, out, todo, workers, progress, on_fail, remote=remote)
        elif workers <= 1 or len(todo) <= 1 or not needs_processes(pipeline):
            runner = UnitRunner(pipeline, out, remote=remote)
            for u, read in runner.read_ahead(todo, ro.read_ahead):
                try:
                    progress.update(runner.run_unit(u, read))
                except MmprepError as e:
                    on_fail(u, e, traceback.format_exc())
                except Exception as e:
                    on_fail(u, e, traceback.format_exc())
        else:
            _run_pool(pipeline, out, todo, workers, progress, on_fail, remote)
    finally:
        progress.close()

    manifest = None
    if remote is not None and not failed and finalize_when_done:
        done_remote = remote.records()
        if all(u["id"] in done_remote for u in units):  # other machines' units: pull them
            remote.pull_units(out, [u["id"] for u in units if not (units_dir / f"{u['id']}.json").exists()])
    if not failed and finalize_when_done and all((units_dir / f"{u['id']}.json").exists() for u in units):
        # in array mode several shares may finish at once: one takes the lock and finalizes
        lock = out / META / "finalize.lock"
        if not _take_lock(lock):
            if not quiet:
                print(f"mmprep: another process is finalizing {out} (or crashed doing so: mmprep finalize {out})", file=sys.stderr)
        else:
            try:
                manifest = finalize(out, pipeline=pipeline, remote=remote)
            finally:
                lock.unlink(missing_ok=True)
    return RunResult(out, manifest, len(units), len(todo) - len(failed), skipped, failed, remote=remote.url if remote else None)


def _take_lock(lock: Path) -> bool:
    """Create ``lock`` exclusively (content: host and pid). A lock left by a dead process of
    this host (a finalizer killed mid-way) is stale and taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
            except (OSError, ValueError):
                return False  # being written right now, or unreadable: someone holds it
            if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
                lock.unlink(missing_ok=True)
                continue
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{socket.gethostname()} {os.getpid()}")
        return True
    return False


def needs_processes(pipeline: Pipeline) -> bool:
    """Worker processes pay off only for per-sample Python work (media, encoders, partitioned
    sources such as tar/MDS reading); purely vectorised pipelines run in the driver, where
    polars already uses every core. ``run.processes: always`` forces the pool."""
    mode = pipeline.run_options.processes
    if mode != "auto":
        return mode == "always"
    per_sample = pipeline.media is not None or bool(pipeline.encoders)
    per_sample = per_sample or any(getattr(c, "per_sample", False) for c in (*pipeline.formatters, *pipeline.writers))
    partitioned = any(type(d.source).scan is Source.scan for d in pipeline.datasets)
    return per_sample or partitioned


def _run_pool(pipeline: Pipeline, out: Path, todo: list[dict], workers: int, progress: Progress, on_fail, remote=None) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # polars' thread pool is not fork-safe
    counter = ctx.Value("i", 0)
    n = min(workers, len(todo))
    args = (pipeline.worker_doc, str(pipeline.base_dir), pipeline.source_path, str(out), pipeline.run_options.device, counter, remote, n)
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init, initargs=args) as pool:
        futures = {pool.submit(_worker_run, u): u for u in todo}
        for fut in as_completed(futures):
            u = futures[fut]
            try:
                progress.update(fut.result())
            except BrokenProcessPool as e:
                on_fail(u, e, "a worker process died (killed or out of memory)")
            except Exception as e:
                on_fail(u, e, getattr(e, "__traceback_text__", "") or "".join(traceback.format_exception(e)))


def _reopen_retryable(out: Path, units: list[dict], remote: Any = None) -> None:
    """--retry-failed: units with retryable rejections are redone (their record removed)."""
    try:
        from .media import RETRYABLE_REASONS
    except ImportError:
        RETRYABLE_REASONS = frozenset()
    units_dir = out / META / "units"
    for u in units:
        rec_path = units_dir / f"{u['id']}.json"
        if rec_path.exists():
            rec = read_json(rec_path)
            if any(r in RETRYABLE_REASONS for r in rec.get("rejected", {})):
                rec_path.unlink()
                if remote is not None:
                    remote.delete([f"{META}/units/{u['id']}.json"])
    (out / META / "manifest.json").unlink(missing_ok=True)
    if remote is not None and remote.exists(f"{META}/manifest.json"):
        remote.delete([f"{META}/manifest.json"])


# -- finalize ----------------------------------------------------------------------------
def finalize(out: str | Path, pipeline: Pipeline | None = None, remote: Any = None) -> dict:
    """Merge per-unit outputs (writers' finalize) and write OUT/_mmprep/manifest.json.

    With ``remote`` (a :class:`mmprep.remote.RemoteOut` mirrored from the work dir ``out``),
    what finalize changed is published there, the manifest last."""
    out = Path(out)
    if remote is not None:
        from .remote import snapshot

        before = snapshot(out)
        manifest = finalize(out, pipeline)
        after = snapshot(out)
        remote.publish(out, {r for r, v in after.items() if before.get(r) != v})
        return manifest
    meta = out / META
    run_json = read_json(meta / "run.json")
    if pipeline is None:
        pipeline = build_pipeline(run_json["config"], base_dir=Path(run_json["base_dir"]), source=run_json.get("source"), interpolate_env=False)
    bind_out(pipeline, out)
    units = run_json["units"]
    records = []
    missing = []
    for u in units:
        p = meta / "units" / f"{u['id']}.json"
        if p.exists():
            records.append(read_json(p))
        else:
            missing.append(u["id"])
    if missing:
        raise MmprepError(f"cannot finalize {out}: {len(missing)} units are not complete (e.g. {missing[:3]}); run again to complete them")
    records.sort(key=lambda r: r["index"])

    datasets: dict[str, dict] = {}
    for ds_summary in run_json["datasets"]:
        datasets[ds_summary["name"]] = {
            "source_rows": ds_summary["source_rows"],
            "filtered": ds_summary["filtered"],
            "sampled_out": ds_summary["sampled_out"],
            "dup_added": ds_summary["dup_added"],
            "planned": 0,
            "written": 0,
            "rejected": {},
            "units": 0,
        }
    examples: dict[str, list] = {}
    for r in records:
        d = datasets[r["dataset"]]
        d["planned"] += r["rows_in"]
        d["written"] += r["rows_written"]
        d["units"] += 1
        for reason, n in r["rejected"].items():
            d["rejected"][reason] = d["rejected"].get(reason, 0) + n
        for reason, ex in r.get("examples", {}).items():
            room = 20 - len(examples.setdefault(reason, []))
            if room > 0:
                examples[reason].extend(ex[:room])
    for name, d in datasets.items():
        if d["planned"] != d["written"] + sum(d["rejected"].values()):
            raise MmprepError(f"accounting error in dataset {name!r}: {d}")
        d["rejected"] = dict(sorted(d["rejected"].items()))
    totals = {
        "source_rows": sum(d["source_rows"] or 0 for d in datasets.values()),
        "filtered": sum(sum(d["filtered"].values()) for d in datasets.values()),
        "sampled_out": sum(d["sampled_out"] for d in datasets.values()),
        "planned": sum(d["planned"] for d in datasets.values()),
        "written": sum(d["written"] for d in datasets.values()),
        "rejected": sum(sum(d["rejected"].values()) for d in datasets.values()),
        "rejected_by_reason": {},
    }
    for d in datasets.values():
        for reason, n in d["rejected"].items():
            totals["rejected_by_reason"][reason] = totals["rejected_by_reason"].get(reason, 0) + n
    totals["rejected_by_reason"] = dict(sorted(totals["rejected_by_reason"].items()))

    encoders = []
    for i, e in enumerate(pipeline.encoders):
        stats: dict[str, int] = {}
        for r in records:
            for k, v in (r.get("encoder_stats") or [{}] * len(pipeline.encoders))[i].items():
                stats[k] = stats.get(k, 0) + v
        encoders.append({"type": e.name, "identity": e.identity(), "outputs": e.output_columns(), "stats": stats})
    manifest: dict[str, Any] = {
        "mmprep_version": __version__,
        "config": run_json["config"],
        "config_hash": run_json["config_hash"],
        "source": run_json.get("source"),
        "plugins": pipeline.registry.versions(),
        "encoders": encoders,
        "datasets": datasets,
        "totals": totals,
        "rejection_examples": examples,
        "units": [
            {k: r[k] for k in ("id", "index", "dataset", "rows_in", "rows_written", "rejected", "seconds", "started_at", "finished_at")}
            for r in records
        ],
        "timings": {
            "plan_seconds": run_json.get("plan_seconds"),
            "unit_seconds": round(sum(r["seconds"] for r in records), 3),
            "first_unit_started": min((r["started_at"] for r in records), default=None),
            "last_unit_finished": max((r["finished_at"] for r in records), default=None),
            "stages": _sum_timings(records),
        },
    }
    writers_info = []
    for i, w in enumerate(pipeline.writers):
        root = out / getattr(w.options, "path", "")
        root.mkdir(parents=True, exist_ok=True)
        wrecords = [
            {"unit": r["id"], "index": r["index"], "rows": r["rows_written"], "stats": (r["writers"][i] if i < len(r["writers"]) else {})}
            for r in records
        ]
        info = w.finalize(root, wrecords, manifest) or {}
        writers_info.append({"type": w.name, "path": getattr(w.options, "path", ""), "info": info})
    manifest["writers"] = writers_info
    manifest["finalized_at"] = time.time()
    write_json_atomic(meta / "manifest.json", manifest)
    return manifest


def _sum_timings(records: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in records:
        for k, v in r.get("timings", {}).items():
            out[k] = round(out.get(k, 0.0) + v, 4)
    return out


# -- verify ------------------------------------------------------------------------------
def verify(out: str | Path) -> list[str]:
    """Check an output directory: manifest accounting, unit records and every writer's verify."""
    out = Path(out)
    mpath = out / META / "manifest.json"
    if not mpath.exists():
        return [f"{mpath}: missing (the run was never finalized)"]
    try:
        manifest = read_json(mpath)
    except ValueError as e:
        return [f"{mpath}: not valid JSON ({e})"]
    problems = []
    for name, d in manifest.get("datasets", {}).items():
        if d["planned"] != d["written"] + sum(d["rejected"].values()):
            problems.append(f"{mpath}: dataset {name!r} planned {d['planned']} != written {d['written']} + rejected")
    for u in manifest.get("units", []):
        if not (out / META / "units" / f"{u['id']}.json").exists():
            problems.append(f"{out / META / 'units' / (u['id'] + '.json')}: unit record missing")
    try:
        pipeline = build_pipeline(manifest["config"], base_dir=out, interpolate_env=False)
    except (ConfigError, MmprepError) as e:
        return problems + [f"{mpath}: cannot rebuild the writers from the stored config: {e}"]
    stored_enc = [{"type": e["type"], "identity": e["identity"]} for e in manifest.get("encoders", [])]
    if stored_enc and pipeline.encoders:
        try:
            current = encoder_identities(pipeline)
        except Exception as e:  # the model is gone: cannot tell, say so
            problems.append(f"{mpath}: cannot recompute encoder identities ({type(e).__name__}: {e})")
        else:
            for i, (a, b) in enumerate(zip(stored_enc, current)):
                if a != b:
                    problems.append(f"{mpath}: encode[{i}] ({b['type']}) identity differs from the model now configured ({'; '.join(_diff(a['identity'], b['identity'])[:3])}): outputs are stale")
    for i, w in enumerate(pipeline.writers):
        root = out / getattr(w.options, "path", "")
        try:
            problems.extend(w.verify(root, manifest))
        except Exception as e:
            problems.append(f"{root}: {w.name} verify failed: {type(e).__name__}: {e}")
    return problems


__all__ = ["run", "finalize", "verify", "RunResult", "config_hash", "parse_shard", "shard_from_env"]
