"""Built-in formatters: rename, template, caption-clean (all polars expressions)."""

from __future__ import annotations

import string

import polars as pl
from pydantic import Field, field_validator

from ..component import REJECT_REASON, Formatter, Options


class RenameOptions(Options):
    columns: dict[str, str] = Field(min_length=1, description="old name -> new name")


class RenameFormatter(Formatter):
    """Rename columns."""

    name = "rename"
    Options = RenameOptions

    def required_columns(self):
        return list(self.options.columns)

    def format(self, df):
        return df.rename(self.options.columns)


def parse_template(template: str) -> tuple[list[str], list[str]]:
    """Split a ``str.format``-style template into literal pieces and field names."""
    literals, fields = [], []
    for lit, fname, spec, conv in string.Formatter().parse(template):
        literals.append(lit)
        if fname is not None:
            if spec or conv:
                raise ValueError(f"format specs/conversions are not supported ({{{fname}!{conv}:{spec}}})")
            if not fname:
                raise ValueError("empty field {} in template: name a column")
            fields.append(fname)
    return literals, fields


def template_expr(template: str, null: str | None = "") -> pl.Expr:
    """A vectorised string expression rendering ``template`` over columns."""
    literals, fields = parse_template(template)
    parts: list[pl.Expr] = []
    for i, lit in enumerate(literals):
        if lit:
            parts.append(pl.lit(lit))
        if i < len(fields):
            c = pl.col(fields[i]).cast(pl.String)
            parts.append(c.fill_null(null) if null is not None else c)
    if not parts:
        return pl.lit("")
    return pl.concat_str(parts) if len(parts) > 1 else parts[0]


class TemplateOptions(Options):
    column: str = Field(description="Output column")
    template: str = Field(description="Python format string over columns, e.g. 'a photo of {caption}'")
    null: str | None = Field(default="", description="Text for null fields (None: the result is null)")

    @field_validator("template")
    @classmethod
    def _check(cls, v):
        parse_template(v)
        return v


class TemplateFormatter(Formatter):
    """Add a string column rendered from a template over other columns."""

    name = "template"
    Options = TemplateOptions

    def required_columns(self):
        return parse_template(self.options.template)[1]

    def format(self, df):
        return df.with_columns(template_expr(self.options.template, self.options.null).alias(self.options.column))


NULL_STRINGS = ["nan", "NaN", "None", "none", "null", "NULL"]


class CaptionCleanOptions(Options):
    column: str = "caption"
    normalize: str | None = Field(default="NFC", description="Unicode normal form (NFC, NFKC...) or null")
    max_chars: int | None = Field(default=None, ge=1, description="Cut to at most this many characters")
    null_strings: list[str] = Field(default_factory=lambda: list(NULL_STRINGS), description="Texts treated as missing")
    drop_empty: bool = Field(default=False, description="Reject rows whose cleaned caption is empty (reason empty_caption)")


class CaptionCleanFormatter(Formatter):
    """Normalise captions: Unicode NFC, no control/zero-width chars, collapsed whitespace."""

    name = "caption-clean"
    Options = CaptionCleanOptions

    def required_columns(self):
        return [self.options.column]

    def format(self, df):
        o = self.options
        c = pl.col(o.column)
        dt = df.schema[o.column]
        if dt.is_float():  # pandas-style NaN captions
            c = pl.when(c.is_nan()).then(None).otherwise(c)
        c = c.cast(pl.String)
        c = pl.when(c.str.strip_chars().is_in(o.null_strings)).then(None).otherwise(c)
        if o.normalize:
            c = c.str.normalize(o.normalize)
        c = c.str.replace_all(r"\s+", " ")  # Unicode whitespace, newlines and tabs included
        c = c.str.replace_all(r"[\p{Cc}\p{Cf}\p{Co}]", "")  # control, zero-width, BOM
        c = c.str.strip_chars()
        if o.max_chars:
            c = c.str.slice(0, o.max_chars).str.strip_chars_end()
        out = df.with_columns(c.alias(o.column))
        if o.drop_empty:
            empty = pl.col(o.column).is_null() | (pl.col(o.column).str.len_chars() == 0)
            reason = pl.when(empty).then(pl.lit("empty_caption")).otherwise(None)
            if REJECT_REASON in out.columns:
                reason = pl.coalesce(pl.col(REJECT_REASON), reason)
            out = out.with_columns(reason.alias(REJECT_REASON))
        return out


ALL = [RenameFormatter, TemplateFormatter, CaptionCleanFormatter]
