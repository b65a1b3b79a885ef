"""mmprep: declarative, resumable, parallel preprocessing of image-text data.

Public API for users and plugin authors::

    import mmprep
    mmprep.Pipeline.from_yaml("pipeline.yaml").run(out="out/")

    from mmprep import hookimpl, Source, Filter, Formatter, Encoder, Writer, Options
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("mmprep")

from .component import (  # noqa: E402
    REJECT_MESSAGE,
    REJECT_REASON,
    Component,
    Context,
    Encoder,
    Filter,
    Formatter,
    Options,
    Partition,
    PartitionData,
    Source,
    UnitInfo,
    Writer,
    WriterOptions,
)
from .config import Pipeline, load_pipeline  # noqa: E402
from .errors import ConfigError, MmprepError, PluginError, ResumeError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "Component",
    "Context",
    "Encoder",
    "Filter",
    "Formatter",
    "Options",
    "Partition",
    "PartitionData",
    "Source",
    "UnitInfo",
    "Writer",
    "WriterOptions",
    "REJECT_REASON",
    "REJECT_MESSAGE",
    "Pipeline",
    "load_pipeline",
    "ConfigError",
    "MmprepError",
    "PluginError",
    "ResumeError",
]
