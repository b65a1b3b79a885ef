"""Plan: per-dataset lazy frames, filter counts, sampling, keys, deterministic work units.

Table datasets are filtered, sampled and keyed as polars lazy queries and sunk with the
streaming engine into one plan file (``OUT/_mmprep/plan.parquet``) so the driver never
holds the whole table; units are fixed row ranges of it. Partitioned datasets (existing
tar/MDS shards) get one unit per partition. The same config and inputs always give the
same units, the same keys in each unit and the same order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .component import Context, Partition
from .config import Dataset, Pipeline
from .errors import ConfigError
from .hashing import hash_strings, unit_floats

ROW = "__row"
KEY_WIDTH = 9


def sanitize_key_expr(col: pl.Expr) -> pl.Expr:
    """Keys safe as file names: every character outside [A-Za-z0-9_-] becomes '_'."""
    return col.cast(pl.String).str.replace_all(r"[^A-Za-z0-9_-]", "_")


def expand_dup(frame, n: int):
    """``dup:n``: every row n times consecutively; copy j > 0 is keyed ``<key>_dup<j>``.
    Works on a LazyFrame (plan) and a DataFrame (partitioned sources, in the unit)."""
    return (
        frame.with_columns(pl.lit(list(range(n)), dtype=pl.List(pl.UInt32)).alias("__dup"))
        .explode("__dup")
        .with_columns(
            pl.when(pl.col("__dup") == 0).then(pl.col("key")).otherwise(pl.format("{}_dup{}", pl.col("key"), pl.col("__dup"))).alias("key")
        )
        .drop("__dup")
    )


class DatasetPlan:
    """The analysed plan of one dataset: counts and (for tables) the final lazy frame."""

    def __init__(self, index: int, ds: Dataset):
        self.index = index
        self.ds = ds
        self.source_rows: int | None = None
        self.filtered: dict[str, int] = {}
        self.sampled_out = 0
        self.dup_added = 0
        self.planned: int | None = None
        self.frame: pl.LazyFrame | None = None
        self.partitions: list[Partition] | None = None
        self.fingerprint: dict = {}
        #: binary columns the plan file does not copy (units read them with source.take)
        self.deferred: list[str] = []
        self.take_state: dict | None = None
        #: what goes into the plan file: ``frame`` with the deferred columns null, plus ROW
        self.stored: pl.LazyFrame | None = None

    def summary(self) -> dict:
        return {
            "name": self.ds.name,
            "kind": "table" if self.frame is not None else "partitioned",
            "source_rows": self.source_rows,
            "filtered": self.filtered,
            "sampled_out": self.sampled_out,
            "dup_added": self.dup_added,
            "planned": self.planned,
            "partitions": len(self.partitions) if self.partitions is not None else None,
            **({"deferred": self.deferred, "take_state": self.take_state} if self.deferred else {}),
        }


def _err(i: int, msg: str, where: str = "source") -> ConfigError:
    return ConfigError(f"datasets[{i}].{where}: {msg}" if where else f"datasets[{i}]: {msg}")


def filter_schema_errors(i: int, ds: Dataset, schema: pl.Schema) -> list[str]:
    errors = []
    for j, f in enumerate(ds.filters):
        for e in f.check_columns(schema):
            errors.append(f"datasets[{i}].filters[{j}] ({f.name}): {e}")
    if ds.key.column and ds.key.column not in schema:
        errors.append(f"datasets[{i}].key.column: column {ds.key.column!r} not found (available: {', '.join(schema.names())})")
    return errors


def analyse(pipeline: Pipeline) -> list[DatasetPlan]:
    """Build every dataset's lazy plan and count rows through filters and sampling.

    Reads only what counting needs (filter columns); raises ConfigError naming the
    dataset for missing files/columns or impossible sampling.
    """
    plans: list[DatasetPlan] = []
    errors: list[str] = []
    schemas: list[pl.Schema] = []
    seed = pipeline.run_options.seed
    for i, ds in enumerate(pipeline.datasets):
        dp = DatasetPlan(i, ds)
        plans.append(dp)
        try:
            lf = ds.source.scan()
            if lf is None:
                parts = ds.source.partitions()
                if parts is None:
                    raise _err(i, f"source {ds.source.name!r} provides neither scan() nor partitions()")
                if ds.sampling.select is not None:
                    raise _err(i, f"{ds.sampling.text!r} needs a table source; partitioned sources support all, hash: and dup:", "sampling")
                dp.partitions = parts
                known = [p.rows for p in parts]
                dp.source_rows = sum(known) if all(r is not None for r in known) else None
                dp.fingerprint = ds.source.fingerprint()
                continue
            dp.fingerprint = ds.source.fingerprint()
            schema = lf.collect_schema()
        except ConfigError as e:
            errors.extend(m if m.startswith("datasets[") else f"datasets[{i}].source.{m}" for m in e.errors)
            continue
        schemas.append(schema)
        errs = filter_schema_errors(i, ds, schema)
        if errs:
            errors.extend(errs)
            continue
        try:
            _plan_table(dp, lf, schema, seed, pipeline.run_options.defer_binary)
        except ConfigError as e:
            errors.extend(e.errors)
        except pl.exceptions.PolarsError as e:
            errors.append(f"datasets[{i}]: cannot evaluate the dataset's filters/sampling: {type(e).__name__}: {e}")
    if not errors and schemas and len(schemas) == len(plans):  # every dataset a table: columns known
        errors.extend(_media_column_errors(pipeline, schemas))
    if errors:
        raise ConfigError(errors, pipeline.source_path)
    _check_concat(plans, pipeline)
    return plans


def _media_column_errors(pipeline: Pipeline, schemas: list[pl.Schema]) -> list[str]:
    """The media stage's extra image columns must exist in at least one dataset (datasets
    without one get no images of it)."""
    media = getattr(pipeline, "media", None)
    if media is None:
        return []
    names = sorted({n for s in schemas for n in s.names()})
    return [
        f"media.extra_image_columns[{j}]: column {c!r} not found in any dataset (available: {', '.join(names) or 'none'})"
        for j, c in enumerate(media.options.extra_image_columns)
        if not any(c in s for s in schemas)
    ]


def has_binary(dtype: pl.DataType) -> bool:
    """Whether a column of this type holds binary data (image bytes), at any nesting depth."""
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return has_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(has_binary(f.dtype) for f in dtype.fields)
    return False


def _plan_table(dp: DatasetPlan, lf: pl.LazyFrame, schema: pl.Schema, seed: int, defer: bool = True) -> None:
    ds, i = dp.ds, dp.index
    derived = not ds.key.column and "key" not in schema
    deferred = [c for c, t in schema.items() if has_binary(t) and c not in ("key", "dataset")] if defer and ds.source.supports_take else []
    if ds.key.column:
        lf = lf.with_columns(sanitize_key_expr(pl.col(ds.key.column)).alias("key"))
    elif not derived:
        lf = lf.with_columns(sanitize_key_expr(pl.col("key")).alias("key"))
    if derived or deferred:  # the source row index: formatted into the key / where units take the bytes from
        lf = lf.with_row_index(ROW)

    # filters, sequentially, counting each one's rejections
    chain = [lf]
    for f in ds.filters:
        chain.append(chain[-1].filter(f.expression(schema).fill_null(False)))
    counts = pl.collect_all([c.select(pl.len()) for c in chain])
    counts = [int(c.item()) for c in counts]
    dp.source_rows = counts[0]
    for f, before, after in zip(ds.filters, counts, counts[1:]):
        dp.filtered[f.reason] = dp.filtered.get(f.reason, 0) + before - after
    lf, rows = chain[-1], counts[-1]

    s = ds.sampling
    try:
        n = s.selected(rows)
    except ValueError as e:
        raise _err(i, str(e), "sampling") from None
    if s.select == "first":
        lf = lf.head(n)
    elif s.select == "end":
        lf = lf.tail(n) if n else lf.head(0)
    elif s.select == "random":
        # seeded, without replacement; the drawn rows keep their input order
        ds_seed = int(hash_strings([ds.slug], seed)[0] % np.uint64(2**63))
        rng = np.random.default_rng([seed & 0xFFFFFFFF, ds_seed])
        picks = np.sort(rng.choice(rows, size=n, replace=False)) if n < rows else None
        if picks is not None:
            lf = lf.with_row_index("__pick").filter(pl.col("__pick").is_in(pl.Series(picks, dtype=pl.UInt32).implode())).drop("__pick")
    kept = n
    if derived:
        lf = lf.with_columns(pl.format("{}-{}", pl.lit(ds.slug), pl.col(ROW).cast(pl.String).str.zfill(KEY_WIDTH)).alias("key"))
        if not deferred:
            lf = lf.drop(ROW)
    if s.hash_fraction is not None and s.hash_fraction < 1:
        frac = s.hash_fraction
        lf = lf.filter(
            pl.col("key").map_batches(lambda k: pl.Series(unit_floats(k, seed) < frac), return_dtype=pl.Boolean)
        )
        kept = int(lf.select(pl.len()).collect().item())
    dp.sampled_out = rows - kept
    if s.dup > 1:
        lf = expand_dup(lf, s.dup)
        dp.dup_added = kept * (s.dup - 1)
    dp.planned = kept * s.dup
    lf = lf.with_columns(pl.lit(ds.name).alias("dataset"))
    lf = lf.select("key", "dataset", pl.exclude("key", "dataset"))
    if ds.key.column or "key" in schema:
        stats = lf.select(pl.len().alias("n"), pl.col("key").n_unique().alias("u"), pl.col("key").null_count().alias("z")).collect()
        n_, u_, z_ = stats.row(0)
        if z_:
            raise _err(i, f"{z_} rows have a null key column", "key")
        if u_ != n_:
            dup = (
                lf.group_by("key").agg(pl.len().alias("n")).filter(pl.col("n") > 1).select("key").limit(3).collect()["key"].to_list()
            )
            raise _err(i, f"keys are not unique after sanitising ({n_ - u_} duplicates, e.g. {dup}); add a dedup filter", "key")
    if deferred:
        dp.deferred = deferred
        try:
            dp.take_state = ds.source.take_state()
        except Exception as e:
            raise _err(i, f"cannot index the input for reading its binary columns back: {type(e).__name__}: {e}") from None
        dp.stored = lf.with_columns([pl.lit(None, dtype=schema[c]).alias(c) for c in deferred])
        dp.frame = lf.drop(ROW)
    else:
        dp.frame = dp.stored = lf


def _check_concat(plans: list[DatasetPlan], pipeline: Pipeline) -> None:
    """Table datasets are concatenated: a column with two different types is an error."""
    seen: dict[str, tuple[pl.DataType, str]] = {}
    errors = []
    for dp in plans:
        if dp.frame is None:
            continue
        for col, dt in dp.frame.collect_schema().items():
            if col in seen and seen[col][0] != dt and dt != pl.Null and seen[col][0] != pl.Null:
                errors.append(
                    f"datasets[{dp.index}]: column {col!r} is {dt} but {seen[col][0]} in dataset {seen[col][1]!r}; "
                    f"rename it or cast it so the datasets can be concatenated"
                )
            else:
                seen.setdefault(col, (dt, dp.ds.name))
    if errors:
        raise ConfigError(errors, pipeline.source_path)


def build_units(plans: list[DatasetPlan], samples_per_unit: int) -> list[dict]:
    """Deterministic work units: row ranges of the plan file, or one per partition."""
    units: list[dict] = []
    offset = 0
    for dp in plans:
        slug = dp.ds.slug
        if dp.frame is not None:
            n = dp.planned or 0
            for k, start in enumerate(range(0, n, samples_per_unit)):
                length = min(samples_per_unit, n - start)
                units.append(
                    {"id": f"{slug}-{k:05d}", "dataset": dp.ds.name, "kind": "table", "offset": offset + start, "rows": length}
                )
            offset += n
        else:
            for k, p in enumerate(dp.partitions or []):
                units.append(
                    {
                        "id": f"{slug}-{k:05d}",
                        "dataset": dp.ds.name,
                        "kind": "partition",
                        "partition": {"id": p.id, "info": p.info, "rows": p.rows},
                        "rows": p.rows,
                    }
                )
    for idx, u in enumerate(units):
        u["index"] = idx
    return units


def table_frame(plans: list[DatasetPlan]) -> pl.LazyFrame | None:
    """What the plan file holds: every table dataset's planned rows, deferred columns null."""
    frames = [dp.stored for dp in plans if dp.stored is not None]
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]


def context_for(pipeline: Pipeline, dataset: str | None = None) -> Context:
    return Context(base_dir=pipeline.base_dir, seed=pipeline.run_options.seed, dataset=dataset)
