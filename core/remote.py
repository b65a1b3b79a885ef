"""Object-store outputs: ``--out s3://bucket/prefix`` (any fsspec URL that is not local).

Object stores have no rename, so nothing can be committed there the way a local unit is
(staging → ``os.replace``). mmprep therefore runs exactly as for a local output inside a
local *work directory* (``run.work_dir``, default ``~/.cache/mmprep/work/<hash of the URL>``)
and mirrors it to the remote prefix in an order that keeps the remote consistent:

1. run start: ``_mmprep/plan.parquet``, then ``_mmprep/run.json`` (the prefix now holds a run);
2. each unit, right after its local commit (in the worker that ran it, so uploads are as
   parallel as the units): the unit's files, then its record ``_mmprep/units/<unit>.json``.
   The record is the remote completion marker; every object is written whole (a PUT is
   atomic), so a crash mid-upload leaves complete objects of a unit without a record, which
   the unit's redo overwrites (file names derive from the unit id);
3. finalize (once every unit has a remote record): units completed by other machines are
   pulled into the work directory, the writers finalize locally, then every file finalize
   wrote or changed is uploaded, remote files finalize removed are deleted, and
   ``_mmprep/manifest.json`` is uploaded last. A reader that sees the manifest sees the
   whole dataset.

Resume works from the same work directory (units committed locally but not yet uploaded
are uploaded first) and from a fresh machine: when the work directory holds no run, the
remote run state (run.json, plan.parquet, unit records) is pulled first. Array mode across
nodes with node-local work directories therefore works: every share uploads its units, and
whichever share sees all records finalizes (pulling the others' files).

Limits: the work directory holds a full copy of the output until finalize (writers such as
exact-N WebDataset shards repack unit files there); finalize locks are per work directory,
so two shares finishing at the same moment on different nodes may both finalize — the
result is the same bytes (finalize is deterministic), only done twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import MmprepError
from .storage import redact, url_filesystem

META = "_mmprep"
#: files of the work directory's _mmprep/ that are never mirrored
_LOCAL_ONLY = ("staging/", "finalize.lock")


def default_work_dir(url: str) -> Path:
    base = Path(os.environ.get("MMPREP_WORK_DIR") or Path.home() / ".cache" / "mmprep" / "work")
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


class RemoteOut:
    """The remote prefix of an object-store output, mirrored from a local work directory.

    Picklable (the filesystem is created lazily), so workers and Ray actors get their own."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._root = ""

    def __getstate__(self) -> dict:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["storage_options"])

    def __repr__(self) -> str:
        return f"RemoteOut({redact(self.url)!r})"

    @property
    def fs(self):
        if self._fs is None:
            self._fs, root = url_filesystem(self.url, self.storage_options)
            self._root = root.rstrip("/")
        return self._fs

    def path(self, rel: str) -> str:
        self.fs  # noqa: B018 - sets _root
        return f"{self._root}/{rel}" if rel else self._root

    def shown(self, rel: str = "") -> str:
        return redact(f"{self.url}/{rel}" if rel else self.url)

    # -- reading ---------------------------------------------------------------------------
    def files(self, prefix: str = "") -> dict[str, int]:
        """Every object under the prefix (or under ``prefix`` inside it): relative path → size."""
        self.fs.invalidate_cache()
        base = self.path(prefix).rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        root = self._root + "/"
        return {p[len(root):]: int(info.get("size") or 0) for p, info in found.items() if p.startswith(root) and info.get("type") != "directory"}

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_json(self, rel: str) -> Any:
        with self.fs.open(self.path(rel), "rb") as fh:
            return json.loads(fh.read())

    def records(self) -> set[str]:
        """Ids of the units whose completion record is on the remote."""
        return {p[len(f"{META}/units/"):-5] for p in self.files(f"{META}/units") if p.endswith(".json") and "/" not in p[len(f"{META}/units/"):]}

    # -- writing ---------------------------------------------------------------------------
    def put(self, local_root: Path, rels: list[str]) -> None:
        """Upload ``local_root/rel`` to ``prefix/rel`` for every rel (concurrently where the
        filesystem batches, as s3fs does)."""
        if not rels:
            return
        try:
            self.fs.put([str(local_root / r) for r in rels], [self.path(r) for r in rels])
        except Exception as e:
            raise MmprepError(f"uploading to {self.shown()} failed ({type(e).__name__}: {redact(str(e))}); rerun to resume") from None

    def put_json(self, rel: str, obj: Any) -> None:
        try:
            self.fs.pipe_file(self.path(rel), json.dumps(obj, indent=1, sort_keys=True, default=str).encode())
        except Exception as e:
            raise MmprepError(f"uploading {self.shown(rel)} failed ({type(e).__name__}: {redact(str(e))}); rerun to resume") from None

    def delete(self, rels: list[str]) -> None:
        if rels:
            self.fs.rm([self.path(r) for r in rels])

    def clear(self) -> None:
        """Delete every object under the prefix (``--overwrite`` of a run)."""
        self.delete(sorted(self.files()))

    def get(self, rels: list[str], local_root: Path) -> None:
        for r in rels:
            (local_root / r).parent.mkdir(parents=True, exist_ok=True)
        if rels:
            self.fs.get([self.path(r) for r in rels], [str(local_root / r) for r in rels])

    # -- the mirror protocol ---------------------------------------------------------------
    def pull_state(self, work: Path, config_hash: str, overwrite: bool) -> None:
        """Make the work directory hold the remote run's state before the engine looks at it.

        Remote objects without a run: refused (never overwrite foreign data). A remote run
        of another pipeline: left to the engine's checks (its run.json is pulled), or
        deleted with ``overwrite``. A work directory holding another run than the remote's
        is reset (the remote is the truth)."""
        remote = self.files()
        if remote and f"{META}/run.json" not in remote:
            raise MmprepError(f"{self.shown()} is not empty and holds no mmprep run (no {META}/run.json); choose an empty or new prefix")
        if not remote:
            return
        stored = self.read_json(f"{META}/run.json")
        if stored.get("config_hash") != config_hash and overwrite:
            self.clear()
            _reset(work)
            return
        local = work / META / "run.json"
        if local.exists():
            try:
                same = json.loads(local.read_text()).get("config_hash") == stored.get("config_hash")
            except ValueError:
                same = False
            if same:
                return
            _reset(work)
        # units complete on the remote are known from their records (RemoteOut.records) and
        # pulled, records with files, only when finalize needs them (pull_units)
        self.get([r for r in (f"{META}/plan.parquet", f"{META}/run.json") if r in remote], work)

    def push_run(self, work: Path) -> None:
        """Upload the plan, then run.json, unless the remote has them."""
        if self.exists(f"{META}/run.json"):
            return
        if (work / META / "plan.parquet").exists():
            self.put(work, [f"{META}/plan.parquet"])
        self.put(work, [f"{META}/run.json"])

    def push_unit(self, work: Path, unit_id: str, files: list[str]) -> None:
        """A unit committed locally: its files, then its record."""
        self.put(work, [f for f in files if (work / f).is_file()])
        self.put(work, [f"{META}/units/{unit_id}.json"])

    def sync_units(self, work: Path, units: list[dict]) -> set[str]:
        """Upload units committed locally whose record is not on the remote (a run stopped
        between its local commit and the upload); return the ids complete on the remote."""
        done = self.records()
        for u in units:
            rec = work / META / "units" / f"{u['id']}.json"
            if u["id"] not in done and rec.exists():
                self.push_unit(work, u["id"], json.loads(rec.read_text()).get("files", []))
                done.add(u["id"])
        return done

    def pull_units(self, work: Path, unit_ids: list[str]) -> None:
        """Units completed on another machine: their records and files into the work dir."""
        for uid in unit_ids:
            rel = f"{META}/units/{uid}.json"
            self.get([rel], work)
            files = json.loads((work / rel).read_text()).get("files", [])
            self.get(files, work)

    def publish(self, work: Path, changed: set[str]) -> None:
        """After a local finalize: upload what finalize wrote or changed (and whatever the
        remote lacks), delete remote output files the work directory no longer has, then the
        manifest, last."""
        local = _local_files(work)
        remote = self.files()
        up = sorted(r for r, size in local.items() if r in changed or remote.get(r) != size)
        up = [r for r in up if r != f"{META}/manifest.json"]
        self.put(work, up)
        gone = sorted(r for r in remote if r not in local and not r.startswith(f"{META}/"))
        self.delete(gone)
        self.put(work, [f"{META}/manifest.json"])


def finalize_url(url: str, work_dir: str | None = None, storage_options: dict | None = None) -> dict:
    """``mmprep finalize s3://…``: pull the remote run into the work dir, finalize, publish."""
    from .engine import finalize

    remote = RemoteOut(url, storage_options)
    if not remote.exists(f"{META}/run.json"):
        raise MmprepError(f"{remote.shown()} holds no mmprep run (no {META}/run.json)")
    work = Path(work_dir) if work_dir else default_work_dir(remote.url)
    work.mkdir(parents=True, exist_ok=True)
    remote.pull_state(work, remote.read_json(f"{META}/run.json")["config_hash"], overwrite=False)
    units = json.loads((work / META / "run.json").read_text())["units"]
    remote.sync_units(work, units)
    remote.pull_units(work, [u["id"] for u in units if not (work / META / "units" / f"{u['id']}.json").exists() and u["id"] in remote.records()])
    return finalize(work, remote=remote)


def verify_url(url: str, storage_options: dict | None = None) -> list[str]:
    """``mmprep verify s3://…``: the remote output (without the plan) checked in a temporary copy;
    problems name the remote objects."""
    import tempfile

    from .engine import verify

    remote = RemoteOut(url, storage_options)
    with tempfile.TemporaryDirectory(prefix="mmprep-verify-") as tmp:
        remote.get(sorted(r for r in remote.files() if r != f"{META}/plan.parquet"), Path(tmp))
        return [p.replace(tmp, remote.shown()) for p in verify(tmp)]


def _reset(work: Path) -> None:
    """Empty a work directory that holds an mmprep run (never anything else)."""
    if (work / META).is_dir():
        for child in work.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _local_files(work: Path) -> dict[str, int]:
    """Files of the work directory that belong on the remote: relative path → size."""
    out: dict[str, int] = {}
    for p in work.rglob("*"):
        if p.is_dir():
            continue
        rel = p.relative_to(work).as_posix()
        if rel.startswith(f"{META}/"):
            inner = rel[len(META) + 1:]
            if inner.startswith(_LOCAL_ONLY) or inner.endswith((".intent.json", ".failed.json")) or "/." in rel or inner.startswith("."):
                continue
        out[rel] = p.stat().st_size
    return out


def snapshot(work: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every mirrored file, to see what finalize changes."""
    return {r: (s, (work / r).stat().st_mtime_ns) for r, s in _local_files(work).items()}


__all__ = ["RemoteOut", "default_work_dir", "finalize_url", "snapshot", "verify_url"]
