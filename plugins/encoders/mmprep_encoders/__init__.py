"""mmprep-encoders: GPU precaching of VAE latents and text embeddings.

Encoders: ``vae`` (diffusers AutoencoderKL), ``clip-text``, ``t5``, ``llm-mean``,
``open-clip-text`` (needs the ``open-clip`` extra) and ``custom`` (any importable class).
Also translates NeMo precache YAML files into mmprep pipelines (``translate_config``).

This module stays cheap to import: torch, diffusers and transformers are imported inside
the encoders' ``setup``/``encode``.
"""

from __future__ import annotations

from mmprep import hookimpl

from .custom import CustomEncoder
from .text import ClipTextEncoder, LlmMeanEncoder, OpenClipTextEncoder, T5TextEncoder
from .vae import VaeEncoder

ALL = [VaeEncoder, ClipTextEncoder, T5TextEncoder, LlmMeanEncoder, OpenClipTextEncoder, CustomEncoder]

__all__ = [c.__name__ for c in ALL] + ["ALL"]


@hookimpl
def register_encoders(register):
    for cls in ALL:
        register(cls)


@hookimpl
def translate_config(document, path):
    """NeMo multimodal precache YAML (``encodings:`` + ``batch_size_per_GPU``...) -> mmprep pipeline."""
    from . import nemo

    if not nemo.is_nemo_precache(document):
        return None
    return nemo.translate(document, path)
