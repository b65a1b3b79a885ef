"""Payload building blocks shared by the LLaVA formatters.

A payload is one LLaVA training sample::

    {"id": ..., "image": ..., "image_gen": ..., "conversations": [{"from": "human", "value": ...}, ...]}

Formatters build its fields as polars expressions (a fixed-shape conversation as a
:class:`Conversation` of turn expressions); :func:`finish` evaluates them, validates them (see
:mod:`mmprep_llava.validate`), encodes the payload as a JSON string column and records
rejections. **Payload column type: a JSON string (pl.String)**, one object per row. A string
has one type whatever the formatter, so units whose rows come from different formatters
(several datasets, several presets) concatenate, and the writers emit it without re-encoding.
Decode with ``json.loads`` or ``pl.col("llava").str.json_decode()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import polars as pl

from mmprep import REJECT_MESSAGE, REJECT_REASON
from mmprep.hashing import hash_strings, splitmix64, unit_floats

from . import validate as V
from .scan import Scan, scan, string_bytes

#: LaViDa-O's constant payload id (``id: constant``).
CONSTANT_ID = "000951660"
#: LaViDa-O's micro-condition placeholder (llava/constants.py MICRO_CONDITION_LABLEL).
MICRO = "[[micro_conds_texts]]"
REJECT = "llava_invalid"
#: Placeholder scheme for images materialised by a llava writer (see writers.py).
MEDIA_SCHEME = "mmprep-media://"


def max_cap_length_default() -> int:
    """``MAX_CAP_LENGTH`` from the environment, default 800 (as LaViDa-O's llava/constants.py)."""
    return int(os.environ.get("MAX_CAP_LENGTH", 800))


@dataclass(frozen=True)
class Conversation:
    """A fixed-shape conversation: one ``(role, value expression)`` per turn.

    :func:`finish` evaluates the turn values as plain string columns, validates them per turn
    and writes the ``conversations`` JSON directly: no list-of-struct column is built.
    """

    turns: tuple[tuple[str, pl.Expr], ...]


def conversation(df: pl.DataFrame | None, *turns: tuple[str, pl.Expr]) -> Conversation:
    """A fixed-shape conversation field (one turn per ``(role, value expression)``)."""
    return Conversation(tuple((r, e) for r, e in turns))


def join_prefix(expr: pl.Expr, prefix: str | None) -> pl.Expr:
    """``os.path.join(prefix, value)`` vectorised: absolute values stay as they are."""
    if not prefix:
        return expr
    sep = "" if prefix.endswith("/") else "/"
    return pl.when(expr.str.starts_with("/")).then(expr).otherwise(pl.lit(prefix + sep) + expr)


_G = np.uint64(0x9E3779B97F4A7C15)
_P = np.uint64(0x100000001B3)
_INV = (pow(0xBF58476D1CE4E5B9, -1, 1 << 64), pow(0x94D049BB133111EB, -1, 1 << 64))


def _unshift(x: np.ndarray, k: int) -> np.ndarray:
    """Inverse of ``x ^ (x >> k)`` on uint64."""
    y = x.copy()
    s = k
    while s < 64:
        y ^= x >> np.uint64(s)
        s += k
    return y


def _unmix(h: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mmprep.hashing`'s splitmix64 finaliser."""
    with np.errstate(over="ignore"):
        x = _unshift(h, 31) * np.uint64(_INV[1])
        x = _unshift(x, 27) * np.uint64(_INV[0])
        return _unshift(x, 30) - _G


def _state0(off: np.ndarray, data: np.ndarray) -> np.ndarray | None:
    """Pre-finaliser state of :func:`mmprep.hashing.hash_strings` at seed 0, per string:
    ``P + sum((byte + 1) * P**(bytes after it)) + length`` (mod 2**64), by Horner's rule over
    the strings of each length. None when there is no byte at all, or too many distinct
    lengths for this to pay (the caller then inverts the core's hash)."""
    lengths = np.diff(off)
    if not len(lengths) or off[-1] == 0 or lengths.max() > 4096:
        return None
    present = np.flatnonzero(np.bincount(lengths))
    if len(present) > 256:
        return None
    sums = np.zeros(len(lengths), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for length in present:
            if length == 0:
                continue
            rows = np.flatnonzero(lengths == length) if len(present) > 1 else None
            starts = off[:-1] if rows is None else off[rows]
            acc = np.zeros(len(starts), dtype=np.uint64)
            for j in range(int(length)):
                acc *= _P
                acc += data[starts + j]
                acc += np.uint64(1)
            if rows is None:
                sums = acc
            else:
                sums[rows] = acc
        return _P + sums + lengths.astype(np.uint64)


def key_draws(keys: pl.Series, seed: int, n: int) -> list[np.ndarray]:
    """``n`` independent uniform [0, 1) draws per key, stable across runs and machines.

    Draw ``j`` is ``unit_floats(keys, seed * 16 + j)``. The keys are hashed once: the hash's
    seed enters its pre-mix state linearly (``(2 * seed + 1) * P + f(key)``), so the seed-0
    state (:func:`_state0`, or recovered from :func:`~mmprep.hashing.hash_strings` by
    inverting the finaliser) is moved to each draw's seed and mixed. The result is checked
    against :func:`~mmprep.hashing.unit_floats` on a few keys; any difference (a changed
    hash) falls back to hashing once per draw.
    """
    seeds = [int(seed) * 16 + j for j in range(n)]
    if keys.len() == 0 or n == 0:
        return [np.zeros(keys.len(), dtype=np.float64) for _ in seeds]
    s = keys.cast(pl.String)
    if s.null_count():
        s = s.fill_null("")  # as hash_strings does
    off, data = string_bytes(s)
    step = _P if off[-1] else np.uint64(1)
    pre0 = _state0(off, data)
    if pre0 is None:
        pre0 = _unmix(hash_strings(s, 0))
    out = []
    with np.errstate(over="ignore"):
        for sd in seeds:
            h = splitmix64(pre0 + np.uint64(2 * sd % (1 << 64)) * step)
            out.append((h >> np.uint64(11)).astype(np.float64) / float(1 << 53))
    probe = s.head(8)
    if not all(np.array_equal(d[: probe.len()], unit_floats(probe, sd)) for d, sd in zip(out, seeds)):
        return [unit_floats(s, seed=sd) for sd in seeds]
    return out


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


_ESC_PREFIX = '{"a":'


def _json_generic(s: pl.Series) -> pl.Series:
    """polars' own JSON encoding of each value (a null gives the text ``null``)."""
    enc = pl.select(pl.struct(s.alias("a")).struct.json_encode()).to_series()
    return enc.str.strip_prefix(_ESC_PREFIX).str.strip_suffix("}")


_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


def _plain_numbers(s: pl.Series) -> bool:
    """Numbers whose text (``cast(pl.String)``) is their JSON: no null, no NaN/inf."""
    if s.null_count():
        return False
    if s.dtype in _INTS:
        return True
    if s.dtype in (pl.Float32, pl.Float64):
        return bool(s.is_finite().all())
    return False


def json_fragments(s: pl.Series, n: int, sc: Scan | None = None) -> list:
    """Fragments (Python strings, series of length ``n``) whose concatenation is, per row, the
    JSON text of ``s``'s value (``null`` for a null), byte-identical to what
    ``struct.json_encode`` writes. A series of length 1 with ``n != 1`` is a constant.

    Fast paths: strings without a byte to escape are emitted as they are between quote
    fragments (only the rows needing escapes go through polars' encoder); non-null finite
    numbers and one-element lists of them (``gen_score: [x]``) through ``cast(pl.String)``.
    Anything else through polars' encoder.
    """
    if s.len() == 1 and n != 1:
        return [_json_generic(s)[0]]
    dt = s.dtype
    if dt == pl.Null:
        return ["null"]
    if dt == pl.String and not s.null_count():
        bad = (sc or scan(s)).escape
        if bad.any():
            idx = np.flatnonzero(bad)
            inner = _json_generic(s.gather(idx)).str.strip_prefix('"').str.strip_suffix('"')
            s = s.clone().scatter(idx, inner)
        return ['"', s, '"']
    if _plain_numbers(s):
        return [s.cast(pl.String)]
    if isinstance(dt, pl.List) and not s.null_count() and bool((s.list.len() == 1).all()):
        inner = s.list.first()
        if _plain_numbers(inner):
            return ["[", inner.cast(pl.String), "]"]
    return [_json_generic(s)]


def _concat(frags: list, n: int) -> pl.Series:
    """Concatenate fragments (Python strings: the same in every row; series of length n)."""
    merged: list = []
    for f in frags:
        if isinstance(f, str) and merged and isinstance(merged[-1], str):
            merged[-1] += f
        else:
            merged.append(f)
    if not any(isinstance(f, pl.Series) for f in merged):
        return pl.repeat("".join(merged), n, dtype=pl.String, eager=True)
    return pl.select(pl.concat_str([pl.lit(f) for f in merged])).to_series()


def finish(
    df: pl.DataFrame,
    fields: dict[str, pl.Expr | Conversation],
    *,
    column: str,
    optional: tuple[str, ...] = (),
    validate: bool = True,
) -> pl.DataFrame:
    """Validate ``fields`` (name -> expression, payload order), encode them and add ``column``.

    ``conversations`` is a :class:`Conversation` (fixed turns) or an expression giving a
    ``list[struct{from, value}]``. ``optional`` fields (never the first) are left out of a
    row's JSON when null there (LaViDa-O only sets ``image`` when it has one). Invalid rows
    get ``_reject_reason = llava_invalid`` and a ``_reject_message`` naming the rule.

    The JSON is assembled from per-field fragments (strings quoted directly unless they need
    escaping; other values through polars' encoder), byte-identical to
    ``pl.struct(fields).struct.json_encode()`` with null optional fields removed.
    """
    n = df.height
    names = list(fields)
    # evaluate: every expression on its own, so a constant stays one value
    vals: dict[str, pl.Series] = {}
    turns: list[tuple[str, pl.Series, Scan | None]] = []
    for name, e in fields.items():
        if isinstance(e, Conversation):
            for r, v in e.turns:
                tv = df.select(v.cast(pl.String).alias("v")).to_series()
                sc = scan(tv) if tv.len() == n and n > 1 and not tv.null_count() else None
                turns.append((r, tv, sc))
        else:
            vals[name] = df.select(e.alias(name)).to_series()

    frags: list = ["{"]
    for i, name in enumerate(names):
        key = json.dumps(name, ensure_ascii=False) + ":"
        sep = "," if i else ""
        e = fields[name]
        if isinstance(e, Conversation):
            frags.append(sep + key + "[")
            for t, (role, v, sc) in enumerate(turns):
                frags.append(("," if t else "") + '{"from":' + json.dumps(role, ensure_ascii=False) + ',"value":')
                frags += json_fragments(v, n, sc)
                frags.append("}")
            frags.append("]")
        elif i and name in optional and vals[name].null_count():
            # left out where null: ',"name":<value>' or nothing
            s = vals[name]
            enc = _concat(json_fragments(s, n), n if s.len() == n else 1)
            part = pl.select(pl.when(pl.lit(s).is_null()).then(pl.lit("")).otherwise(sep + key + pl.lit(enc))).to_series()
            frags.append(part if part.len() == n or n == 1 else part[0])
        else:
            frags.append(sep + key)
            frags += json_fragments(vals[name], n)
    frags.append("}")
    payload = _concat(frags, n).alias(column)

    out = df.with_columns(payload)
    if not validate:
        return out
    stats, roles = _stats(df, fields, vals, turns, n)
    msg = V.messages(stats, roles).alias(REJECT_MESSAGE)
    reason = pl.select(pl.when(pl.lit(msg).is_not_null()).then(pl.lit(REJECT)).otherwise(pl.lit(None, dtype=pl.String))).to_series()
    reason = reason.alias(REJECT_REASON)
    if REJECT_REASON in df.columns:
        old_msg = pl.col(REJECT_MESSAGE) if REJECT_MESSAGE in df.columns else pl.lit(None, dtype=pl.String)
        keep_old = pl.col(REJECT_REASON).is_not_null()
        return out.with_columns(
            pl.when(keep_old).then(pl.col(REJECT_REASON)).otherwise(pl.lit(reason)).alias(REJECT_REASON),
            pl.when(keep_old).then(old_msg).otherwise(pl.lit(msg)).alias(REJECT_MESSAGE),
        )
    return out.with_columns(reason, msg)


def _stats(df, fields, vals, turns, n) -> tuple[pl.DataFrame, str | None]:
    """The validation statistics frame (:data:`validate.STATS`) and the constant roles string."""
    used = [k for k in ("image", "image_gen", "image_gen_enc", "conversations") if k in vals]
    cols = [vals[k] if vals[k].len() == n else vals[k].new_from_index(0, n) for k in used]
    frame = pl.DataFrame([pl.repeat(0, n, dtype=pl.UInt8, eager=True).alias("__n"), *cols])
    img = frame.with_columns(V.image_stats(frame.schema, {k: pl.col(k) for k in used})).select("n_img", "has_gen", "n_enc")
    if isinstance(fields["conversations"], Conversation):
        st = V.turn_stats(turns, n)
        roles = st.pop("roles")
        cols = {k: (v if isinstance(v, pl.Series) else pl.repeat(v, n, dtype=pl.UInt32, eager=True)) for k, v in st.items()}
        return img.with_columns(**cols, roles=pl.lit(None, dtype=pl.String)), roles
    return img.hstack(frame.select(V.list_stats(pl.col("conversations")))), None


def id_expr(mode: str) -> pl.Expr:
    return pl.lit(CONSTANT_ID) if mode == "constant" else pl.col("key").cast(pl.String)


def _ext(b: pl.Expr) -> pl.Expr:
    """File extension of encoded image bytes, from their magic number."""
    return (
        pl.when(b.bin.starts_with(b"\x89PNG")).then(pl.lit("png"))
        .when(b.bin.starts_with(b"RIFF")).then(pl.lit("webp"))
        .when(b.bin.starts_with(b"GIF8")).then(pl.lit("gif"))
        .otherwise(pl.lit("jpg"))
    )


#: Suffix of the columns the media stage fills for ``extra_image_columns`` (``<column>_media``;
#: ``mmprep.media.EXTRA_SUFFIX``, not imported to keep this module's import light).
EXTRA_BYTES_SUFFIX = "_media"
_SEP = "\x1f"  # joins list names inside one string while they are built (never in a key)


def media_files(df: pl.DataFrame, column: str) -> pl.Expr:
    """File names (under ``images/``) of the images in bytes column ``column``:

    * ``image_bytes`` (the media stage's main image): ``<key>.<ext>``;
    * ``<c>_media`` holding one image: ``<key>-<c>.<ext>``;
    * ``<c>_media`` holding a list: the list ``<key>-<c>-<i>.<ext>`` (i = position).

    Null where there are no bytes. The formatters' placeholders and the writers' files both
    come from here, so they always agree."""
    b = pl.col(column)
    key = pl.col("key").cast(pl.String)
    if column == "image_bytes":
        return pl.when(b.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(pl.concat_str([key, pl.lit("."), _ext(b)]))
    stem = column[: -len(EXTRA_BYTES_SUFFIX)] if column.endswith(EXTRA_BYTES_SUFFIX) else column
    if not isinstance(df.schema[column], (pl.List, pl.Array)):
        return pl.when(b.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(pl.concat_str([key, pl.lit(f"-{stem}."), _ext(b)]))
    prefix = pl.concat_str([key, pl.lit(f"-{stem}-")])
    suffixes = b.list.eval(pl.concat_str([pl.int_range(pl.len()).cast(pl.String), pl.lit("."), _ext(pl.element())]))
    names = pl.concat_str([prefix, suffixes.list.join(pl.lit(_SEP) + prefix)]).str.split(_SEP)
    return pl.when(b.list.len() == 0).then(pl.lit([], dtype=pl.List(pl.String))).otherwise(names)


def media_path(df: pl.DataFrame, original: pl.Expr, column: str | None = None) -> pl.Expr:
    """A placeholder the llava writers turn into the path of the materialised image file, or
    the original path where nothing was materialised.

    The image comes from ``<column>_media`` when the media stage filled it
    (``extra_image_columns``), else from the main ``image_bytes``."""
    bcol = f"{column}{EXTRA_BYTES_SUFFIX}" if column else None
    if bcol is None or bcol not in df.columns:
        bcol = "image_bytes"
    if bcol not in df.columns:
        return original
    if isinstance(df.schema[bcol], (pl.List, pl.Array)):
        return media_list(df, pl.concat_list([original]), column).list.first()
    names = media_files(df, bcol)
    return pl.when(names.is_null()).then(original).otherwise(pl.lit(MEDIA_SCHEME) + names)


def media_list(df: pl.DataFrame, original: pl.Expr, column: str | None) -> pl.Expr:
    """A list of image paths: placeholders for the images the media stage materialised from
    ``column`` (``<column>_media``, a list or one image), else the original list."""
    bcol = f"{column}{EXTRA_BYTES_SUFFIX}" if column else None
    if bcol is None or bcol not in df.columns:
        return original
    names = media_files(df, bcol)
    if not isinstance(df.schema[bcol], (pl.List, pl.Array)):
        names = pl.when(names.is_null()).then(pl.lit(None, dtype=pl.List(pl.String))).otherwise(pl.concat_list([names]))
    placeholders = names.list.eval(pl.lit(MEDIA_SCHEME) + pl.element())
    return pl.when(names.is_null()).then(original).otherwise(placeholders)
