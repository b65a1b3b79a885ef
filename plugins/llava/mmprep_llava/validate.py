"""Vectorised validation of LLaVA payloads.

Rules (the first failing one is reported in ``_reject_message``):

* ``conversations``: at least one turn;
* ``roles``: turns alternate human/gpt, starting with human;
* ``empty_value``: every turn has a non-empty value;
* ``image_tokens``: number of ``<image>`` tokens in human turns == number of ``image`` entries
  (a string counts 1, a list its length, absent/null 0);
* ``image_gen``: ``<image_gen>`` appears in some turn iff ``image_gen`` is set;
* ``image_gen_enc``: number of ``<image_gen_enc>`` tokens == number of ``image_gen_enc`` entries.
"""

from __future__ import annotations

import polars as pl

_ROLES = r"^human(,gpt,human)*(,gpt)?$"


def _count(dt: pl.DataType | None, e: pl.Expr) -> pl.Expr:
    if dt is None or dt == pl.Null:
        return pl.lit(0, dtype=pl.UInt32)
    if isinstance(dt, (pl.List, pl.Array)):
        return e.list.len().fill_null(0).cast(pl.UInt32)
    return pl.when(e.is_null()).then(0).otherwise(1).cast(pl.UInt32)


def validation_message(schema: pl.Schema, fields: dict[str, pl.Expr]) -> pl.Expr:
    """A string expression: null for a valid payload, else ``"<rule>: <details>"``."""
    conv = fields["conversations"]
    role = pl.element().struct.field("from")
    value = pl.element().struct.field("value")
    n_turns = conv.list.len().fill_null(0)
    roles = conv.list.eval(role.fill_null("null")).list.join(",")
    empty = conv.list.eval(value.is_null() | (value.str.strip_chars().str.len_chars() == 0)).list.any()

    def tokens(tok: str, human_only: bool) -> pl.Expr:
        cnt = value.str.count_matches(tok, literal=True).fill_null(0)
        if human_only:
            cnt = pl.when(role == "human").then(cnt).otherwise(0)
        return conv.list.eval(cnt).list.sum().fill_null(0).cast(pl.UInt32)

    n_img_tok = tokens("<image>", True)
    n_img = _count(schema.get("image"), fields.get("image", pl.lit(None)))
    n_gen_tok = tokens("<image_gen>", False)
    has_gen = _count(schema.get("image_gen"), fields.get("image_gen", pl.lit(None))) > 0
    n_enc_tok = tokens("<image_gen_enc>", False)
    n_enc = _count(schema.get("image_gen_enc"), fields.get("image_gen_enc", pl.lit(None)))

    s = lambda e: e.cast(pl.String)  # noqa: E731
    return (
        pl.when(n_turns == 0)
        .then(pl.lit("conversations: no turns"))
        .when(~roles.str.contains(_ROLES))
        .then(pl.concat_str([pl.lit("roles: turns ["), roles, pl.lit("] do not alternate human/gpt starting with human")]))
        .when(empty)
        .then(pl.lit("empty_value: a turn has an empty or null value"))
        .when(n_img_tok != n_img)
        .then(pl.concat_str([pl.lit("image_tokens: "), s(n_img_tok), pl.lit(" <image> token(s) in human turns but "), s(n_img), pl.lit(" image(s)")]))
        .when((n_gen_tok > 0) != has_gen)
        .then(
            pl.when(has_gen)
            .then(pl.lit("image_gen: image_gen is set but no turn has <image_gen>"))
            .otherwise(pl.lit("image_gen: <image_gen> in the conversation but image_gen is not set"))
        )
        .when(n_enc_tok != n_enc)
        .then(pl.concat_str([pl.lit("image_gen_enc: "), s(n_enc_tok), pl.lit(" <image_gen_enc> token(s) but "), s(n_enc), pl.lit(" image_gen_enc image(s)")]))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
