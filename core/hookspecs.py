"""The hooks a mmprep plugin can implement: the plugin-author reference.

A plugin is a module (or object) registered under the entry-point group ``mmprep``::

    # pyproject.toml of your distribution
    [project.entry-points.mmprep]
    aspect = "mmprep_aspect"

and implementing any of the hooks below with ``mmprep.hookimpl``::

    from mmprep import hookimpl, Filter, Options

    class AspectFilter(Filter):
        \"\"\"Keep rows whose aspect ratio lies in [min, max].\"\"\"
        name = "aspect"
        class Options(Options):
            min: float = 0.5
            max: float = 2.0
        def expression(self, schema):
            ...

    @hookimpl
    def register_filters(register):
        register(AspectFilter)

Importing the plugin module must stay cheap: import torch, diffusers, streaming or
webdataset inside the methods that need them, never at module top level, so that
``mmprep --help`` and ``mmprep plugins`` never load them.

The component base classes and what each method must do are documented in
:mod:`mmprep.component`. Only this module declares hooks.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("mmprep")


@hookspec
def register_sources(register: Callable[[type], None]) -> None:
    """Register source components (subclasses of :class:`mmprep.Source`).

    Call ``register(cls)`` once per class. A source turns a ``datasets[i].source``
    entry into rows: either a lazy polars table (``scan``), which the engine filters,
    samples and cuts into row-range work units, or a list of partitions (``partitions``
    + ``read_partition``, e.g. existing tar or MDS shards), one work unit per partition.
    """


@hookspec
def register_filters(register: Callable[[type], None]) -> None:
    """Register filter components (subclasses of :class:`mmprep.Filter`).

    A filter returns a polars boolean expression (``expression(schema)``); rows where it
    is false or null are rejected and counted under the filter's reason
    (``filter:<name>`` unless the filter sets ``reason``).
    """


@hookspec
def register_formatters(register: Callable[[type], None]) -> None:
    """Register formatter components (subclasses of :class:`mmprep.Formatter`).

    A formatter maps a unit's batch (a polars DataFrame) to a new DataFrame; it may
    reject rows by setting the reserved column ``_reject_reason`` (see
    :data:`mmprep.REJECT_REASON`).
    """


@hookspec
def register_encoders(register: Callable[[type], None]) -> None:
    """Register encoder components (subclasses of :class:`mmprep.Encoder`).

    Encoders compute model outputs (latents, text embeddings) for a batch. Their model is
    loaded once per worker process in ``setup(device)``; ``encode(df)`` returns the frame
    with the output columns added. Heavy imports (torch, diffusers, transformers) belong
    inside ``setup``/``encode``.
    """


@hookspec
def register_writers(register: Callable[[type], None]) -> None:
    """Register writer components (subclasses of :class:`mmprep.Writer`).

    A writer writes one unit's rows into a private staging directory
    (``write_unit``); the engine moves the staged files into the output atomically and
    records the unit as complete. ``finalize`` runs once when every unit is complete
    (merge indexes, repack shards, write ``wdinfo.pkl``...). ``verify`` checks an
    existing output for ``mmprep verify``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``mmprep`` CLI.

    ``cli`` is a :class:`mmprep.cli.CommandRegistry`; call
    ``cli.add(name, help, configure, run)`` where ``configure(parser)`` adds argparse
    arguments and ``run(args) -> int`` executes the command and returns its exit code.
    """


@hookspec(firstresult=True)
def translate_config(document: Any, path: str) -> dict | None:
    """Translate a foreign config dialect into an mmprep pipeline document.

    Called with every loaded YAML/JSON document before validation. Return ``None`` when
    the document is not in your dialect; otherwise return a native pipeline dict (the
    structure that ``mmprep schema`` describes), which the core then validates as usual.
    Raise :class:`mmprep.ConfigError` for a document in your dialect that is invalid;
    error paths are relative to the document. ``path`` is the file the document came
    from (for resolving relative paths and for messages).
    """
