"""Built-in filters: each is one polars expression (vectorised, pushed into the scan)."""

from __future__ import annotations

import polars as pl
from pydantic import Field, field_validator, model_validator

from ..component import Filter, Options


class RangeOptions(Options):
    column: str
    min: float | None = None
    max: float | None = None
    strict: bool = Field(default=False, description="Exclude the bounds (min < x < max)")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class RangeFilter(Filter):
    """Keep rows whose column lies between min and max (inclusive unless strict)."""

    name = "range"
    Options = RangeOptions

    def required_columns(self):
        return [self.options.column]

    def expression(self, schema):
        o = self.options
        c = pl.col(o.column)
        e = pl.lit(True)
        if o.min is not None:
            e = e & ((c > o.min) if o.strict else (c >= o.min))
        if o.max is not None:
            e = e & ((c < o.max) if o.strict else (c <= o.max))
        return e


class MinSizeOptions(Options):
    min_size: int = Field(ge=0, description="Both sides must be at least this many pixels")
    width_column: str = "width"
    height_column: str = "height"
    max_size: int | None = Field(default=None, ge=1, description="Optional upper bound on both sides")


class MinSizeFilter(Filter):
    """Keep rows whose width and height columns are both >= min_size (table size columns)."""

    name = "min-size"
    Options = MinSizeOptions

    def required_columns(self):
        return [self.options.width_column, self.options.height_column]

    def expression(self, schema):
        o = self.options
        w, h = pl.col(o.width_column), pl.col(o.height_column)
        e = (w >= o.min_size) & (h >= o.min_size)
        if o.max_size is not None:
            e = e & (w <= o.max_size) & (h <= o.max_size)
        return e


class AestheticOptions(Options):
    cutoff: float
    column: str = "aesthetic"


class AestheticFilter(Filter):
    """Keep rows whose aesthetic score column is strictly greater than cutoff."""

    name = "aesthetic"
    Options = AestheticOptions

    def required_columns(self):
        return [self.options.column]

    def expression(self, schema):
        return pl.col(self.options.column) > self.options.cutoff


class NotNullOptions(Options):
    columns: list[str] = Field(min_length=1)
    empty_is_null: bool = Field(default=True, description="Treat empty/whitespace strings and NaN as missing")


class NotNullFilter(Filter):
    """Keep rows where every listed column has a value (not null, NaN or blank)."""

    name = "not-null"
    Options = NotNullOptions

    def required_columns(self):
        return list(self.options.columns)

    def expression(self, schema):
        e = pl.lit(True)
        for c in self.options.columns:
            col = pl.col(c)
            cond = col.is_not_null()
            dt = schema.get(c)
            if self.options.empty_is_null and dt is not None:
                if dt == pl.String:
                    cond = cond & (col.str.strip_chars().str.len_chars() > 0)
                elif dt.is_float():
                    cond = cond & col.is_not_nan()
            e = e & cond
        return e


class TextLengthOptions(Options):
    column: str = "caption"
    min_chars: int = Field(default=1, ge=0)
    max_chars: int | None = Field(default=None, ge=0)


class TextLengthFilter(Filter):
    """Keep rows whose text column has between min_chars and max_chars characters."""

    name = "text-length"
    Options = TextLengthOptions

    def required_columns(self):
        return [self.options.column]

    def expression(self, schema):
        n = pl.col(self.options.column).str.len_chars()
        e = n >= self.options.min_chars
        if self.options.max_chars is not None:
            e = e & (n <= self.options.max_chars)
        return e


class MaxListLengthOptions(Options):
    column: str
    value: int = Field(ge=0)
    null_is_empty: bool = Field(default=True, description="A null list counts as length 0")


class MaxListLengthFilter(Filter):
    """Keep rows whose list column has at most value entries (LaViDa-O max_enc_images)."""

    name = "max-list-length"
    Options = MaxListLengthOptions

    def required_columns(self):
        return [self.options.column]

    def expression(self, schema):
        c = pl.col(self.options.column)
        dt = schema.get(self.options.column)
        if dt == pl.String:  # a JSON-encoded list
            n = c.str.json_decode(pl.List(pl.String)).list.len()
        elif isinstance(dt, pl.Array):
            n = pl.lit(dt.size)
        else:
            n = c.list.len()
        if self.options.null_is_empty:
            n = n.fill_null(0)
        return n <= self.options.value


class DedupOptions(Options):
    columns: list[str] = Field(min_length=1)
    keep: str = Field(default="first", description="'first' or 'last' occurrence in input order wins")

    @field_validator("keep")
    @classmethod
    def _keep(cls, v):
        if v not in ("first", "last"):
            raise ValueError("must be 'first' or 'last'")
        return v


class DedupFilter(Filter):
    """Drop duplicate rows by column(s); the first (or last) in input order wins."""

    name = "dedup"
    Options = DedupOptions

    @property
    def reason(self):
        return "duplicate"

    def required_columns(self):
        return list(self.options.columns)

    def expression(self, schema):
        s = pl.struct(self.options.columns) if len(self.options.columns) > 1 else pl.col(self.options.columns[0])
        return s.is_first_distinct() if self.options.keep == "first" else s.is_last_distinct()


class SqlOptions(Options):
    where: str = Field(description="Boolean SQL expression, e.g. \"intWidth >= 512 AND fltLaionAesthScore > 5.67\"")

    @field_validator("where")
    @classmethod
    def _parse(cls, v):
        try:
            pl.sql_expr(v)
        except Exception as e:
            raise ValueError(f"invalid SQL expression: {e}") from None
        return v


class SqlFilter(Filter):
    """Keep rows where a boolean SQL expression over the columns is true."""

    name = "sql"
    Options = SqlOptions

    def required_columns(self):
        try:
            return sorted(set(pl.sql_expr(self.options.where).meta.root_names()))
        except Exception:
            return []

    def expression(self, schema):
        return pl.sql_expr(self.options.where)


ALL = [
    RangeFilter,
    MinSizeFilter,
    AestheticFilter,
    NotNullFilter,
    TextLengthFilter,
    MaxListLengthFilter,
    DedupFilter,
    SqlFilter,
]
