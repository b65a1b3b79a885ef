"""MDS index handling: merging unit indexes, checking shards, parsing shard files.

The merged index follows ``streaming.base.util.merge_index``: ``{"version": 2, "shards":
[...]}`` with every shard's ``raw_data``/``zip_data``/``raw_meta``/``zip_meta`` basename
prefixed by its sub-directory (``<unit>/shard.00000.mds``).

MDS shard file layout (``MDSWriter.encode_joint_shard``)::

    uint32 num_samples | uint32 offsets[num_samples + 1] | config JSON | samples
    sample = uint32 sizes of the variable-size columns | column data (sorted column order)
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index.json"
_FILE_KEYS = ("raw_data", "zip_data", "raw_meta", "zip_meta")


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def merge_unit_indexes(root: Path, units: list[str]) -> dict[str, Any]:
    """Merge ``root/<unit>/index.json`` for ``units`` (in order) into ``root/index.json``."""
    shards: list[dict[str, Any]] = []
    columns: dict[str, str] = {}
    mixed: list[str] = []
    missing: list[str] = []
    for unit in units:
        p = root / unit / INDEX
        if not p.exists():
            missing.append(str(p))
            continue
        obj = json.loads(p.read_text())
        for sh in obj["shards"]:
            sh = dict(sh)
            for k in _FILE_KEYS:
                if sh.get(k):
                    sh[k] = {**sh[k], "basename": os.path.join(unit, sh[k]["basename"])}
            cols = dict(zip(sh.get("column_names", []), sh.get("column_encodings", [])))
            if not columns:
                columns = cols
            elif cols != columns and unit not in mixed:
                mixed.append(unit)
            shards.append(sh)
    if missing:
        raise FileNotFoundError(f"mds finalize: unit index missing (unit not committed?): {', '.join(missing)}")
    write_json_atomic(root / INDEX, {"version": 2, "shards": shards})
    info: dict[str, Any] = {
        "index": INDEX,
        "samples": sum(s["samples"] for s in shards),
        "shards": len(shards),
        "bytes": sum((s.get("zip_data") or s["raw_data"])["bytes"] for s in shards),
        "columns": columns,
    }
    if mixed:
        info["warnings"] = [f"units {mixed} have different columns/encodings than the first unit"]
    return info


def shard_file(shard: dict[str, Any]) -> dict[str, Any]:
    """The file info of the shard as stored (compressed when compression is on)."""
    return shard.get("zip_data") or shard["raw_data"]


def parse_shard(data: bytes, columns: list[str], encodings: list[str], sizes: list[int | None]):
    """Split a raw MDS shard into per-column lists of raw byte strings."""
    n = int(np.frombuffer(data, np.uint32, 1, 0)[0])
    offsets = np.frombuffer(data, np.uint32, n + 1, 4).astype(np.int64)
    if n and offsets[-1] > len(data):
        raise ValueError(f"shard truncated: {len(data)} bytes, offsets reach {int(offsets[-1])}")
    var = [i for i, s in enumerate(sizes) if s is None]
    nvar = len(var)
    out: list[list[bytes]] = [[] for _ in columns]
    mv = memoryview(data)
    for j in range(n):
        a, b = int(offsets[j]), int(offsets[j + 1])
        head = np.frombuffer(data, np.uint32, nvar, a) if nvar else ()
        pos = a + 4 * nvar
        vi = 0
        for i, s in enumerate(sizes):
            if s is None:
                s = int(head[vi])
                vi += 1
            out[i].append(bytes(mv[pos:pos + s]))
            pos += s
        if pos != b:
            raise ValueError(f"sample {j}: column sizes add up to {pos - a} bytes, the shard says {b - a}")
    return n, out


def _problems_of_files(root: Path, index: dict[str, Any]) -> tuple[list[str], int]:
    from streaming.base.hashing import get_hash

    problems: list[str] = []
    total = 0
    for sh in index.get("shards", []):
        total += int(sh.get("samples", 0))
        for key in ("zip_data", "raw_data", "zip_meta", "raw_meta"):
            finfo = sh.get(key)
            if not finfo:
                continue
            if key.startswith("raw") and sh.get("zip" + key[3:]):
                continue  # stored compressed: only the compressed file exists
            path = root / finfo["basename"]
            if not path.exists():
                problems.append(f"{path}: missing shard file ({sh.get('samples')} samples)")
                continue
            size = path.stat().st_size
            if size != finfo["bytes"]:
                problems.append(f"{path}: truncated or resized shard ({size} bytes, the index says {finfo['bytes']})")
                continue
            hashes = finfo.get("hashes") or {}
            if hashes:
                data = path.read_bytes()
                for algo, want in sorted(hashes.items()):
                    got = get_hash(algo, data)
                    if got != want:
                        problems.append(f"{path}: {algo} hash mismatch (corrupted shard: {got} != {want})")
            if key == "raw_data" and sh.get("format", "mds") == "mds":
                with open(path, "rb") as fh:
                    head = fh.read(4)
                n = int(np.frombuffer(head, np.uint32)[0]) if len(head) == 4 else -1
                if n != sh.get("samples"):
                    problems.append(f"{path}: holds {n} samples, the index says {sh.get('samples')}")
    return problems, total


def check_dataset(root: Path, expected: int | None) -> list[str]:
    """Problems of the MDS dataset at ``root`` (empty list = valid)."""
    idx_path = root / INDEX
    if not idx_path.exists():
        return [f"{idx_path}: missing (the dataset was never finalized)"]
    try:
        index = json.loads(idx_path.read_text())
    except Exception as e:
        return [f"{idx_path}: unreadable ({type(e).__name__}: {e})"]
    problems, total = _problems_of_files(root, index)
    problems += _unit_index_problems(root, index)
    if expected is not None and total != expected:
        problems.append(f"{idx_path}: {total} samples indexed, the manifest says {expected} were written")
    if problems:
        return problems
    # Finally, the real reader: StreamingDataset over the whole directory.
    try:
        n = _read_with_streaming(root, index)
    except Exception as e:
        return [f"{root}: StreamingDataset cannot read it ({type(e).__name__}: {e})"]
    if n != total:
        problems.append(f"{root}: StreamingDataset sees {n} samples, the index lists {total}")
    return problems


def _unit_index_problems(root: Path, index: dict[str, Any]) -> list[str]:
    """Each unit directory's own index.json must list exactly the shards the root index
    attributes to it (same names, sample counts and sizes)."""
    problems: list[str] = []
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for sh in index.get("shards", []):
        name = (sh.get("raw_data") or {}).get("basename", "")
        if "/" in name:
            unit, base = name.split("/", 1)
            by_unit.setdefault(unit, []).append({**sh, "raw_data": {**sh["raw_data"], "basename": base}})
    for unit, shards in sorted(by_unit.items()):
        upath = root / unit / INDEX
        try:
            uidx = json.loads(upath.read_text())
        except FileNotFoundError:
            problems.append(f"{upath}: missing (the root index lists {len(shards)} shards of this unit)")
            continue
        except Exception as e:
            problems.append(f"{upath}: unreadable ({type(e).__name__}: {e})")
            continue

        def sig(lst):
            return [((x.get("raw_data") or {}).get("basename"), x.get("samples"), (x.get("raw_data") or {}).get("bytes")) for x in lst]

        if sig(uidx.get("shards", [])) != sig(shards):
            problems.append(f"{upath}: its shards differ from what {root / INDEX} lists for unit {unit!r}")
    return problems


def _read_with_streaming(root: Path, index: dict[str, Any]) -> int:
    """Open with ``StreamingDataset``; read the first and last sample of every shard."""
    from streaming.base import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(root), remote=None, shuffle=False, batch_size=1)
    try:
        n = ds.num_samples
        start = 0
        for sh in index["shards"]:
            k = int(sh["samples"])
            for i in {start, start + k - 1} if k else ():
                sample = ds.get_item(i)
                missing = [c for c in sh.get("column_names", []) if c not in sample]
                if missing:
                    raise ValueError(f"sample {i} lacks columns {missing}")
            start += k
        return n
    finally:
        release_shared_memory(ds)
        del ds
        gc.collect()


def release_shared_memory(obj: Any) -> int:
    """Close (and unlink, where this process made them) the shared-memory blocks a
    ``StreamingDataset`` holds; returns how many. streaming registers every block's cleanup with
    ``atexit``, which keeps the blocks, and one descriptor each, alive until the process ends:
    a long-lived process that verifies many outputs would otherwise run out of descriptors."""
    import atexit

    from streaming.base.shared.memory import SharedMemory

    seen: set[int] = set()
    released = 0

    def walk(o: Any) -> None:
        nonlocal released
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, SharedMemory):
            atexit.unregister(o.cleanup)
            o.cleanup()
            released += 1
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        elif (type(o).__module__ or "").startswith("streaming") and hasattr(o, "__dict__"):
            for v in vars(o).values():
                walk(v)

    walk(obj)
    return released
