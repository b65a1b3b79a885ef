"""mmprep-llava: LLaVA / LaViDa-O conversation payloads.

* formatters ``llava-t2i``, ``llava-t2i-hash``, ``llava-grounded-caption``, ``llava-rec``,
  ``llava-understanding``, ``llava-multi-image``, ``llava-edit``, ``llava-template``,
  ``llava-passthrough`` and the helper ``llava-image-root``: each adds the payload column
  (default ``llava``) holding one LLaVA sample as a **JSON string** and rejects invalid
  payloads with reason ``llava_invalid``;
* writers ``llava-jsonl`` and ``llava-json``;
* the LaViDa-O data YAML dialect (``translate_config``): ``mmprep run data.yaml --out DIR``.

Importing this module is cheap (polars, pydantic, pyyaml only).
"""

from __future__ import annotations

from mmprep import hookimpl

from . import dialect, formatters, writers

__all__ = ["formatters", "writers", "dialect"]


@hookimpl
def register_formatters(register):
    for cls in formatters.ALL:
        register(cls)


@hookimpl
def register_writers(register):
    for cls in writers.ALL:
        register(cls)


@hookimpl
def translate_config(document, path):
    return dialect.translate(document, path)
