"""mmprep-mds: MosaicML MDS writer and source for mmprep.

* writer ``mds``: one ``MDSWriter`` per work unit (``<unit id>/``), crash-safe (a failed unit
  never leaves an index), merged ``index.json`` at the writer root, micro_diffusion presets
  (``raw``, ``latents``), image bytes stored verbatim, ``verify`` with the real reader;
* source ``mds``: an existing MDS dataset (local or remote + cache dir) as rows.

Importing this module is cheap: ``streaming`` (and through it torch) is imported only
inside the methods that write or read shards.
"""

from __future__ import annotations

from mmprep import hookimpl

from .source import MdsSource
from .writer import MdsWriter

__all__ = ["MdsSource", "MdsWriter"]


@hookimpl
def register_writers(register):
    register(MdsWriter)


@hookimpl
def register_sources(register):
    register(MdsSource)
