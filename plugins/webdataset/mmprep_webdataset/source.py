"""Source ``webdataset``: existing tar shards as rows, one work unit per tar."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import polars as pl
from pydantic import Field, field_validator

from mmprep import Options, Partition, PartitionData, Source
from mmprep.errors import ConfigError
from mmprep.storage import expand_paths, open_url, redact, url_filesystem

from ._tar import TarDamage, iter_member_data, safe_key, split_name

PICKLE_EXTS = ("pickle", "pkl", "pyd")
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


class WebDatasetSourceOptions(Options):
    path: str | list[str] = Field(
        description="Tar path(s): local paths, globs, brace patterns ('data/{00000..00287}.tar') or fsspec URLs"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (credentials, endpoint)")
    require: list[str] = Field(
        default_factory=list,
        description="Member extensions every sample must have, e.g. [jpg, txt]; 'jpg;png;webp' accepts any of them. "
        "Samples lacking one are dropped and counted as missing_member (the rest of the tar is kept)",
    )
    image_extensions: list[str] = Field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp"],
        description="Member extensions read into image_bytes (the first present wins; others stay binary columns)",
    )
    text: dict[str, str] = Field(
        default_factory=lambda: {"txt": "caption"},
        description="Member extension -> string column (UTF-8 decoded)",
    )
    json_mode: Literal["struct", "flatten", "raw"] = Field(
        default="struct",
        description="json members: 'struct' (one struct column named json), 'flatten' (one column per field; "
        "a field clashing with another column becomes json_<field>) or 'raw' (the bytes, binary column json)",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Member extension -> column name for other members (default: the extension)"
    )
    key_column: str | None = Field(default="__key__", description="Column keeping the original __key__ (null: none)")
    shard_column: str | None = Field(default="__url__", description="Column keeping the tar's path/URL (null: none)")
    allow_pickle: bool = Field(
        default=False,
        description="Read .pickle/.pkl members (as raw bytes, column 'pickle'). Off: samples holding one are "
        "rejected as pickle_refused, their bytes never loaded (unpickling untrusted data runs code)",
    )

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must name at least one tar")
        return v


class WebDatasetSource(Source):
    """Read WebDataset tar shards (paths, globs, {a..b} braces, fsspec URLs); one work unit per tar."""

    name = "webdataset"
    Options = WebDatasetSourceOptions

    # driver ---------------------------------------------------------------------------
    def files(self) -> list[str]:
        import braceexpand

        o = self.options
        pats = o.path if isinstance(o.path, list) else [o.path]
        out: list[str] = []
        for pat in pats:
            for p in braceexpand.braceexpand(pat):
                p = self.context.resolve(p)
                found = expand_paths([p], o.storage_options)
                out.extend(found)
        seen = set()
        files = [f for f in out if not (f in seen or seen.add(f))]
        if not files:
            raise ConfigError(f"path: no tar matches {redact(str(o.path))!r}")
        return files

    def partitions(self) -> list[Partition]:
        files = self.files()
        names = [_stem(f) for f in files]
        if len(set(names)) != len(names):  # same basename in several folders: use the path
            names = [_SAFE.sub("_", f.split("://", 1)[-1]).strip("_") for f in files]
        return [Partition(id=n, info={"url": f}, rows=None) for n, f in zip(names, files)]

    def fingerprint(self) -> dict[str, Any]:
        sizes = {}
        for f in self.files():
            fs, p = url_filesystem(f, self.options.storage_options)
            try:
                sizes[redact(f)] = fs.size(p)
            except Exception:
                sizes[redact(f)] = None
        return {"files": sizes}

    # worker ---------------------------------------------------------------------------
    def read_partition(self, partition: Partition) -> PartitionData:
        url = partition.info["url"]
        samples: list[tuple[str, dict[str, bytes]]] = []
        rejected: dict[str, int] = {}
        examples: dict[str, list[dict]] = {}

        def reject(reason: str, key: str, message: str, n: int = 1) -> None:
            rejected[reason] = rejected.get(reason, 0) + n
            ex = examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append({"key": key, "message": message})

        cur_key: str | None = None
        cur: dict[str, bytes] = {}
        try:
            with open_url(url, self.options.storage_options) as fh:
                for mname, data in iter_member_data(fh, redact(url)):
                    kx = split_name(mname)
                    if kx is None:
                        continue
                    key, ext = kx
                    if key != cur_key:
                        if cur_key is not None:
                            samples.append((cur_key, cur))
                        cur_key, cur = key, {}
                    cur[ext] = data
        except TarDamage as e:
            reject(
                "truncated_shard",
                cur_key or f"{partition.id}@{len(samples)}",
                f"{e}; {len(samples)} samples read before the damage, the sample in progress and anything after are lost",
            )
            cur_key = None
        except (OSError, ValueError) as e:
            reject("truncated_shard", partition.id, f"{redact(url)}: cannot read ({type(e).__name__}: {e})")
            cur_key = None
        if cur_key is not None:
            samples.append((cur_key, cur))
        return PartitionData(self._frame(samples, url, reject), rejected, examples)

    def _frame(self, samples, url, reject) -> pl.DataFrame:
        o = self.options
        require = [r.split(";") for r in o.require]
        cols: dict[str, list] = {"key": []}
        if o.key_column:
            cols[o.key_column] = []
        n = 0
        jsons: list[Any] = []
        has_json = False
        binary_cols: set[str] = set()
        for key, members in samples:
            missing = [alts for alts in require if not any(a in members for a in alts)]
            if missing:
                reject("missing_member", safe_key(key), f"{key}: no {' or '.join(missing[0])} member (has {sorted(members)})")
                continue
            if not o.allow_pickle:
                bad = [e for e in members if e.rsplit(".", 1)[-1] in PICKLE_EXTS]
                if bad:
                    reject("pickle_refused", safe_key(key), f"{key}: .{bad[0]} member not read (set allow_pickle: true to load pickles)")
                    continue
            row: dict[str, Any] = {}
            img_done = False
            for ext, data in members.items():
                if ext in o.image_extensions and not img_done and _first_image(members, o.image_extensions) == ext:
                    row["image_bytes"] = data
                    binary_cols.add("image_bytes")
                    img_done = True
                elif ext in o.text:
                    row[o.text[ext]] = data.decode("utf-8", errors="replace")
                elif ext == "json" and o.json_mode != "raw":
                    has_json = True
                    continue
                else:
                    col = o.columns.get(ext, ext)
                    row[col] = data
                    binary_cols.add(col)
            if "json" in members and o.json_mode != "raw":
                try:
                    jsons.append(json.loads(members["json"]))
                except ValueError:
                    jsons.append(None)
            else:
                jsons.append(None)
            for c in list(row):
                if c not in cols:
                    cols[c] = [None] * n
            for c, lst in cols.items():
                if c == "key":
                    lst.append(safe_key(key))
                elif c == o.key_column:
                    lst.append(key)
                else:
                    lst.append(row.get(c))
            n += 1
        schema: dict[str, Any] = {}
        for c in cols:
            if c in ("key", o.key_column):
                schema[c] = pl.String
            elif c in binary_cols:
                schema[c] = pl.Binary
            else:
                schema[c] = pl.String
        df = pl.DataFrame(cols, schema=schema)
        if o.shard_column:
            df = df.with_columns(pl.lit(url).alias(o.shard_column))
        if has_json and n:
            js = pl.Series("json", [j if isinstance(j, dict) else None for j in jsons], strict=False)
            if js.dtype == pl.Null:
                js = js.cast(pl.Struct({}))
            if o.json_mode == "struct":
                df = df.with_columns(js)
            else:
                fields = pl.DataFrame({"json": js}).unnest("json")
                fields = fields.rename({c: (f"json_{c}" if c in df.columns else c) for c in fields.columns})
                df = pl.concat([df, fields], how="horizontal")
        return df


def _first_image(members: dict, exts: list[str]) -> str | None:
    for e in exts:
        if e in members:
            return e
    return None


def _stem(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suf in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(suf):
            base = base[: -len(suf)]
            break
    return _SAFE.sub("_", base).strip("_") or "shard"
