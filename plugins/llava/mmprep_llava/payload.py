"""Payload building blocks shared by the LLaVA formatters (all polars expressions).

A payload is one LLaVA training sample::

    {"id": ..., "image": ..., "image_gen": ..., "conversations": [{"from": "human", "value": ...}, ...]}

Formatters build its fields as expressions, :func:`finish` validates them (see
:mod:`mmprep_llava.validate`), encodes the payload as a JSON string column and records
rejections. **Payload column type: a JSON string (pl.String)**, one object per row. A string
has one type whatever the formatter, so units whose rows come from different formatters
(several datasets, several presets) concatenate, and the writers emit it without re-encoding.
Decode with ``json.loads`` or ``pl.col("llava").str.json_decode()``.
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from mmprep import REJECT_MESSAGE, REJECT_REASON
from mmprep.hashing import unit_floats

from .validate import validation_message

#: LaViDa-O's constant payload id (``id: constant``).
CONSTANT_ID = "000951660"
#: LaViDa-O's micro-condition placeholder (llava/constants.py MICRO_CONDITION_LABLEL).
MICRO = "[[micro_conds_texts]]"
REJECT = "llava_invalid"
#: Placeholder scheme for images materialised by a llava writer (see writers.py).
MEDIA_SCHEME = "mmprep-media://"

_TMP = "__llava_"


def max_cap_length_default() -> int:
    """``MAX_CAP_LENGTH`` from the environment, default 800 (as LaViDa-O's llava/constants.py)."""
    return int(os.environ.get("MAX_CAP_LENGTH", 800))


def conversation(df: pl.DataFrame, *turns: tuple[str, pl.Expr]) -> pl.Expr:
    """A fixed-shape conversation column (one turn per ``(role, value expression)``).

    Built from the evaluated value columns as one struct series of ``rows * turns`` reshaped
    to rows (``pl.concat_list`` of structs is ~20x slower), used as a literal column.
    """
    n, k = df.height, len(turns)
    if n == 0:
        return pl.lit(pl.Series("conversations", [], dtype=CONV_DTYPE))
    vals = df.select([e.cast(pl.String).alias(f"v{i}") for i, (_, e) in enumerate(turns)])
    flat = pl.concat([vals[f"v{i}"] for i in range(k)]).rechunk()  # turn-major
    order = (np.arange(n, dtype=np.int64)[:, None] + np.arange(k, dtype=np.int64)[None, :] * n).ravel()
    roles = pl.Series([r for r, _ in turns], dtype=pl.String).gather(np.tile(np.arange(k), n))
    turns_s = pl.DataFrame({"from": roles, "value": flat.gather(order)}).to_struct("conversations")
    return pl.lit(turns_s.reshape((n, k)).arr.to_list().cast(CONV_DTYPE))


def join_prefix(expr: pl.Expr, prefix: str | None) -> pl.Expr:
    """``os.path.join(prefix, value)`` vectorised: absolute values stay as they are."""
    if not prefix:
        return expr
    sep = "" if prefix.endswith("/") else "/"
    return pl.when(expr.str.starts_with("/")).then(expr).otherwise(pl.lit(prefix + sep) + expr)


def key_draws(keys: pl.Series, seed: int, n: int) -> list[np.ndarray]:
    """``n`` independent uniform [0, 1) draws per key, stable across runs and machines."""
    return [unit_floats(keys, seed=int(seed) * 16 + j) for j in range(n)]


def as_list(df: pl.DataFrame, column: str) -> pl.Expr:
    """A list-of-strings expression from a list column, a JSON-encoded list or a single string."""
    dt = df.schema[column]
    c = pl.col(column)
    if isinstance(dt, (pl.List, pl.Array)):
        return c.cast(pl.List(pl.String))
    if dt == pl.String:
        # a JSON list ('["a", "b"]') or a single path (LaViDa-O: isinstance(x, str) -> [x])
        return (
            pl.when(c.str.starts_with("["))
            .then(c.str.json_decode(pl.List(pl.String)))
            .otherwise(pl.concat_list([c]))
        )
    if dt == pl.Null:
        return pl.lit(None, dtype=pl.List(pl.String))
    raise ValueError(f"column {column!r} is {dt}, expected a list of paths or a string")


CONV_DTYPE = pl.List(pl.Struct({"from": pl.String, "value": pl.String}))


def as_conversations(df: pl.DataFrame, column: str) -> pl.Expr:
    """Conversations from a list-of-struct column or a JSON string column (extra keys dropped)."""
    dt = df.schema[column]
    c = pl.col(column)
    if dt == pl.String:
        return c.str.json_decode(CONV_DTYPE)
    if isinstance(dt, pl.List) and isinstance(dt.inner, pl.Struct):
        names = [f.name for f in dt.inner.fields]
        if "from" not in names or "value" not in names:
            raise ValueError(f"column {column!r}: conversation turns need 'from' and 'value' (have {names})")
        return c.list.eval(pl.struct(pl.element().struct.field("from").cast(pl.String), pl.element().struct.field("value").cast(pl.String)))
    raise ValueError(f"column {column!r} is {dt}, expected conversations (a list of {{from, value}} or a JSON string)")


def finish(
    df: pl.DataFrame,
    fields: dict[str, pl.Expr],
    *,
    column: str,
    optional: tuple[str, ...] = (),
    validate: bool = True,
) -> pl.DataFrame:
    """Validate ``fields`` (name -> expression, payload order), encode them and add ``column``.

    ``optional`` fields are left out of a row's JSON when null there (LaViDa-O only sets
    ``image`` when it has one). Invalid rows get ``_reject_reason = llava_invalid`` and a
    ``_reject_message`` naming the rule.
    """
    names = list(fields)
    tmp = {n: f"{_TMP}{i}" for i, n in enumerate(names)}
    work = df.with_columns([e.alias(tmp[n]) for n, e in fields.items()])
    payload = pl.struct([pl.col(tmp[n]).alias(n) for n in names]).struct.json_encode()
    for n in optional:
        if n in fields:
            # a key is always followed by ':'; inside a JSON string a '"' is escaped, so
            # ',"name":null' can only be the field itself (never the first field: id is).
            payload = payload.str.replace_all(f',"{n}":null', "", literal=True)
    exprs = [payload.alias(column)]
    if validate:
        msg = validation_message(work.select([pl.col(tmp[n]).alias(n) for n in names]).schema, {n: pl.col(tmp[n]) for n in names})
        reason = pl.when(msg.is_not_null()).then(pl.lit(REJECT)).otherwise(pl.lit(None, dtype=pl.String))
        if REJECT_REASON in df.columns:
            old_msg = pl.col(REJECT_MESSAGE) if REJECT_MESSAGE in df.columns else pl.lit(None, dtype=pl.String)
            keep_old = pl.col(REJECT_REASON).is_not_null()
            exprs.append(pl.when(keep_old).then(pl.col(REJECT_REASON)).otherwise(reason).alias(REJECT_REASON))
            exprs.append(pl.when(keep_old).then(old_msg).otherwise(msg).alias(REJECT_MESSAGE))
        else:
            exprs += [reason.alias(REJECT_REASON), msg.alias(REJECT_MESSAGE)]
    return work.with_columns(exprs).drop(list(tmp.values()))


def id_expr(mode: str) -> pl.Expr:
    return pl.lit(CONSTANT_ID) if mode == "constant" else pl.col("key").cast(pl.String)


def media_path(df: pl.DataFrame, original: pl.Expr) -> pl.Expr:
    """With the media stage's ``image_bytes`` present: a placeholder the llava writers turn into
    the path of the materialised image file; otherwise the original path."""
    if "image_bytes" not in df.columns:
        return original
    b = pl.col("image_bytes")
    ext = (
        pl.when(b.bin.starts_with(b"\x89PNG")).then(pl.lit("png"))
        .when(b.bin.starts_with(b"RIFF")).then(pl.lit("webp"))
        .when(b.bin.starts_with(b"GIF8")).then(pl.lit("gif"))
        .otherwise(pl.lit("jpg"))
    )
    return pl.when(b.is_null()).then(original).otherwise(pl.concat_str([pl.lit(MEDIA_SCHEME), pl.col("key"), pl.lit("."), ext]))
