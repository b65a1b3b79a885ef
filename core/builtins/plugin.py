"""Registers the built-in components; loaded by the registry like any plugin."""

from __future__ import annotations

from .. import hookimpl
from . import filters, formatters, sources, writers


@hookimpl
def register_sources(register):
    for cls in sources.ALL:
        register(cls)


@hookimpl
def register_filters(register):
    for cls in filters.ALL:
        register(cls)


@hookimpl
def register_formatters(register):
    for cls in formatters.ALL:
        register(cls)


@hookimpl
def register_writers(register):
    for cls in writers.ALL:
        register(cls)
