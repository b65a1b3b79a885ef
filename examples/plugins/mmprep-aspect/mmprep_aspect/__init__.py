"""mmprep-aspect: keep images whose aspect ratio (width / height) lies in a range.

The complete plugin of the tutorial in docs/plugins.md.
"""

import polars as pl
from pydantic import Field, model_validator

import mmprep


class AspectFilter(mmprep.Filter):
    """Keep rows whose width/height ratio lies between min_ratio and max_ratio."""

    name = "aspect"

    class Options(mmprep.Options):
        min_ratio: float = Field(default=0.5, gt=0, description="Smallest width/height kept")
        max_ratio: float = Field(default=2.0, gt=0, description="Largest width/height kept")
        width_column: str = "width"
        height_column: str = "height"

        @model_validator(mode="after")
        def _order(self):
            if self.min_ratio > self.max_ratio:
                raise ValueError(f"min_ratio ({self.min_ratio}) is greater than max_ratio ({self.max_ratio})")
            return self

    @property
    def reason(self) -> str:
        return "bad_aspect_ratio"

    def required_columns(self):
        return [self.options.width_column, self.options.height_column]

    def expression(self, schema):
        o = self.options
        ratio = pl.col(o.width_column).cast(pl.Float64) / pl.col(o.height_column).cast(pl.Float64)
        return ratio.is_between(o.min_ratio, o.max_ratio)


@mmprep.hookimpl
def register_filters(register):
    register(AspectFilter)
