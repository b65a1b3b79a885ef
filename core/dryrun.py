"""``mmprep run --dry-run``: validate + plan without writing anything."""

from __future__ import annotations

from .config import Pipeline
from .plan import analyse, build_units


def dry_run(pipeline: Pipeline, measure: bool = False) -> dict:
    """Rows per dataset after filters and sampling, units, writers (nothing is written)."""
    plans = analyse(pipeline)
    units = build_units(plans, pipeline.run_options.samples_per_unit)
    return {
        "config_hash": pipeline.config_hash,
        "datasets": [dp.summary() for dp in plans],
        "units": len(units),
        "samples_per_unit": pipeline.run_options.samples_per_unit,
        "writers": [{"type": w.name, "path": getattr(w.options, "path", "")} for w in pipeline.writers],
        "encoders": [e.name for e in pipeline.encoders],
    }
