"""Vectorised validation of LLaVA payloads.

Rules (the first failing one is reported in ``_reject_message``):

* ``conversations``: at least one turn;
* ``roles``: turns alternate human/gpt, starting with human;
* ``empty_value``: every turn has a non-empty value;
* ``image_tokens``: number of ``<image>`` tokens in human turns == number of ``image`` entries
  (a string counts 1, a list its length, absent/null 0);
* ``image_gen``: ``<image_gen>`` appears in some turn iff ``image_gen`` is set;
* ``image_gen_enc``: number of ``<image_gen_enc>`` tokens == number of ``image_gen_enc`` entries.

The rules read per-row statistics (:data:`STATS`). :func:`list_stats` computes them from a
conversation list column (``list.eval``, any number of turns); :func:`turn_stats` from the
value columns of a fixed-shape conversation (one column per turn, no list at all), which is
much cheaper. :func:`messages` turns the statistics into the message column, building
message strings only for the failing rows.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import polars as pl

_ROLES = r"^human(,gpt,human)*(,gpt)?$"
IMAGE, IMAGE_GEN, IMAGE_GEN_ENC = "<image>", "<image_gen>", "<image_gen_enc>"

#: Columns of the statistics frame :func:`messages` reads.
STATS = ("n_turns", "roles", "empty", "n_img_tok", "n_img", "n_gen_tok", "has_gen", "n_enc_tok", "n_enc")


def _count(dt: pl.DataType | None, e: pl.Expr) -> pl.Expr:
    if dt is None or dt == pl.Null:
        return pl.lit(0, dtype=pl.UInt32)
    if isinstance(dt, (pl.List, pl.Array)):
        return e.list.len().fill_null(0).cast(pl.UInt32)
    return pl.when(e.is_null()).then(0).otherwise(1).cast(pl.UInt32)


def image_stats(schema: pl.Schema, fields: dict[str, pl.Expr]) -> list[pl.Expr]:
    """``n_img``, ``has_gen``, ``n_enc``: the image counts the token rules compare against."""
    return [
        _count(schema.get("image"), fields.get("image", pl.lit(None))).alias("n_img"),
        (_count(schema.get("image_gen"), fields.get("image_gen", pl.lit(None))) > 0).alias("has_gen"),
        _count(schema.get("image_gen_enc"), fields.get("image_gen_enc", pl.lit(None))).alias("n_enc"),
    ]


def list_stats(conv: pl.Expr) -> list[pl.Expr]:
    """Conversation statistics of a ``list[struct{from, value}]`` expression."""
    role = pl.element().struct.field("from")
    value = pl.element().struct.field("value")

    def tokens(tok: str, human_only: bool) -> pl.Expr:
        cnt = value.str.count_matches(tok, literal=True).fill_null(0)
        if human_only:
            cnt = pl.when(role == "human").then(cnt).otherwise(0)
        return conv.list.eval(cnt).list.sum().fill_null(0).cast(pl.UInt32)

    return [
        conv.list.len().fill_null(0).cast(pl.UInt32).alias("n_turns"),
        conv.list.eval(role.fill_null("null")).list.join(",").alias("roles"),
        conv.list.eval(value.is_null() | (value.str.strip_chars().str.len_chars() == 0)).list.any().alias("empty"),
        tokens(IMAGE, True).alias("n_img_tok"),
        tokens(IMAGE_GEN, False).alias("n_gen_tok"),
        tokens(IMAGE_GEN_ENC, False).alias("n_enc_tok"),
    ]


def _token_counts(v: pl.Series, n: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of ``<image>``, ``<image_gen>``, ``<image_gen_enc>`` per row of a string series
    (length ``n``, or 1 for a constant broadcast to ``n``), counted only on ``rows`` (those
    that may hold a '<'; default: found here)."""
    out = [np.zeros(n, dtype=np.uint32) for _ in range(3)]
    if v.len() == 1 and n != 1:
        for o, tok in zip(out, (IMAGE, IMAGE_GEN, IMAGE_GEN_ENC)):
            o[:] = int(v.str.count_matches(tok, literal=True).fill_null(0)[0])
        return out[0], out[1], out[2]
    idx = np.flatnonzero(v.str.contains("<", literal=True).fill_null(False).to_numpy()) if rows is None else rows
    if len(idx):
        sub = v.gather(idx)
        for o, tok in zip(out, (IMAGE, IMAGE_GEN, IMAGE_GEN_ENC)):
            o[idx] = sub.str.count_matches(tok, literal=True).fill_null(0).to_numpy()
    return out[0], out[1], out[2]


def _empty(v: pl.Series, n: int, rows: np.ndarray | None) -> np.ndarray:
    """Null, or nothing but white space, per row; tested only on ``rows`` when given."""
    # strip_chars() strips Unicode White_Space, which regex \s matches: the same test, no copy
    if rows is None or (v.len() == 1 and n != 1):
        e = (v.is_null() | ~v.str.contains(r"\S").fill_null(False)).to_numpy()
        return e if len(e) == n else np.full(n, bool(e[0]))
    e = np.zeros(n, dtype=bool)
    if len(rows):
        sub = v.gather(rows)
        e[rows] = (sub.is_null() | ~sub.str.contains(r"\S").fill_null(False)).to_numpy()
    return e


def turn_stats(turns: list[tuple[str, pl.Series, Any]], n: int) -> dict[str, pl.Series | object]:
    """Conversation statistics of a fixed-shape conversation, from its evaluated turn values.

    ``turns``: ``(role, value series, scan)`` with series of length ``n`` or 1 (a constant);
    ``scan`` (a :class:`mmprep_llava.scan.Scan` or None) narrows the rows tested. Returns
    series of length ``n`` or Python scalars (the same for every row).
    """
    roles = ",".join(t[0] for t in turns)
    empty = np.zeros(n, dtype=bool)
    n_img = np.zeros(n, dtype=np.uint32)
    n_gen = np.zeros(n, dtype=np.uint32)
    n_enc = np.zeros(n, dtype=np.uint32)
    for role, v, sc in turns:
        empty |= _empty(v, n, None if sc is None else np.flatnonzero(sc.blank))
        c_img, c_gen, c_enc = _token_counts(v, n, None if sc is None else np.flatnonzero(sc.tokens))
        if role == "human":
            n_img += c_img
        n_gen += c_gen
        n_enc += c_enc
    return {
        "n_turns": len(turns),
        "roles": roles,
        "empty": pl.Series(empty),
        "n_img_tok": pl.Series(n_img),
        "n_gen_tok": pl.Series(n_gen),
        "n_enc_tok": pl.Series(n_enc),
    }


def _rules() -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    c = pl.col
    return (
        c("n_turns") == 0,
        ~c("roles").str.contains(_ROLES),
        c("empty"),
        c("n_img_tok") != c("n_img"),
        (c("n_gen_tok") > 0) != c("has_gen"),
        c("n_enc_tok") != c("n_enc"),
    )


def message_expr() -> pl.Expr:
    """The message (null when valid) from the :data:`STATS` columns."""
    no_turns, bad_roles, empty, img, gen, enc = _rules()
    c = pl.col
    s = lambda e: e.cast(pl.String)  # noqa: E731
    return (
        pl.when(no_turns)
        .then(pl.lit("conversations: no turns"))
        .when(bad_roles)
        .then(pl.concat_str([pl.lit("roles: turns ["), c("roles"), pl.lit("] do not alternate human/gpt starting with human")]))
        .when(empty)
        .then(pl.lit("empty_value: a turn has an empty or null value"))
        .when(img)
        .then(pl.concat_str([pl.lit("image_tokens: "), s(c("n_img_tok")), pl.lit(" <image> token(s) in human turns but "), s(c("n_img")), pl.lit(" image(s)")]))
        .when(gen)
        .then(
            pl.when(c("has_gen"))
            .then(pl.lit("image_gen: image_gen is set but no turn has <image_gen>"))
            .otherwise(pl.lit("image_gen: <image_gen> in the conversation but image_gen is not set"))
        )
        .when(enc)
        .then(pl.concat_str([pl.lit("image_gen_enc: "), s(c("n_enc_tok")), pl.lit(" <image_gen_enc> token(s) but "), s(c("n_enc")), pl.lit(" image_gen_enc image(s)")]))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def messages(stats: pl.DataFrame, roles: str | None = None) -> pl.Series:
    """Message per row (null when valid) of a :data:`STATS` frame; strings built only for the
    failing rows. ``roles``: the roles string shared by every row (a fixed-shape conversation),
    checked once; the frame's ``roles`` column is then not read."""
    n = stats.height
    no_turns, bad_roles, empty, img, gen, enc = _rules()
    if roles is not None:
        bad_roles = pl.lit(re.search(_ROLES, roles) is None)
    bad = stats.select((no_turns | bad_roles | empty | img | gen | enc).fill_null(True)).to_series().to_numpy()
    idx = np.flatnonzero(bad)
    out = pl.repeat(None, n, dtype=pl.String, eager=True).alias("msg")
    if len(idx):
        failing = stats[idx] if roles is None else stats[idx].with_columns(pl.lit(roles).alias("roles"))
        out = out.scatter(idx, failing.select(message_expr()).to_series())
    return out
