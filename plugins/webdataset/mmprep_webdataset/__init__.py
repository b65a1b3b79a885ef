"""mmprep-webdataset: WebDataset tars in and out.

* writer ``webdataset``: deterministic tar shards (``<key>.<ext>`` members, fixed mtime/owner/
  order), exactly ``samples_per_shard`` samples in every shard but the last across the whole
  run (per-unit part tars repacked by member byte copy at finalize), atomic shards,
  ``shards.json`` (per-shard stats and key lists), ``wdinfo.pkl`` (NeMo), the NeMo precache
  layout (one ``<key>.pickle`` of numpy arrays per sample), and ``sidecar``/``merge`` modes that
  add columns to existing shards joined by key (LLM2CLIP / ProCLIP).
* source ``webdataset``: tars from paths, globs, brace patterns or fsspec URLs, one work unit
  per tar; damage is counted (``missing_member``, ``truncated_shard``), never fatal.

webdataset itself (which imports torch) is never imported here: tars are written and read
with the standard library's ``tarfile``.
"""

from __future__ import annotations

from mmprep import hookimpl

from .source import WebDatasetSource
from .writer import WebDatasetWriter

__all__ = ["WebDatasetSource", "WebDatasetWriter"]


@hookimpl
def register_sources(register):
    register(WebDatasetSource)


@hookimpl
def register_writers(register):
    register(WebDatasetWriter)
