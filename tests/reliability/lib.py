"""Helpers of the reliability suite."""

from __future__ import annotations

from pathlib import Path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def jpeg(w: int, h: int, seed: int, quality: int = 85) -> bytes:
    """A small deterministic photo-like JPEG."""
    import io

    import numpy as np
    from PIL import Image

    r = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3) + r.integers(0, 60, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype("uint8")).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def visible(root: Path) -> list[Path]:
    """Files a consumer sees: not hidden (no path part starting with '.')."""
    if not Path(root).exists():
        return []
    return [p for p in sorted(Path(root).rglob("*")) if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)]


def done_units(out: Path) -> set[str]:
    units = Path(out) / "_mmprep" / "units"
    if not units.exists():
        return set()
    return {p.name[:-5] for p in units.glob("*.json") if not p.name.endswith((".intent.json", ".failed.json"))}


def intent_entries(out: Path) -> set[str]:
    """Files (relative to out) listed by the intents of units being committed."""
    import json

    units = Path(out) / "_mmprep" / "units"
    entries: set[str] = set()
    for p in units.glob("*.intent.json") if units.exists() else []:
        try:
            entries.update(json.loads(p.read_text())["entries"])
        except (OSError, ValueError):
            pass  # the intent itself is written atomically; a vanished one is fine
    return entries


def read_mds(root: Path) -> list[dict]:
    """Every sample of an MDS dataset through the real StreamingDataset (decoded)."""
    import gc

    from streaming.base import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(root), remote=None, shuffle=False, batch_size=1)
    try:
        rows = []
        for i in range(ds.num_samples):
            s = ds.get_item(i)
            rows.append({k: (v.tobytes() if hasattr(v, "tobytes") and not isinstance(v, (bytes, str)) else v) for k, v in s.items()})
        return rows
    finally:
        from mmprep_mds.index import release_shared_memory

        release_shared_memory(ds)
        del ds
        gc.collect()


def read_wds(root: Path) -> list[dict]:
    """Every sample of a webdataset directory (shards listed in shards.json) via webdataset."""
    import json
    import warnings

    import webdataset as wds

    names = [s["name"] for s in json.loads((Path(root) / "shards.json").read_text())["shards"]]
    urls = [str(Path(root) / n) for n in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        return [dict(s) for s in ds]
