"""The ``custom`` encoder: any importable class (``cls: package.module.Class`` + kwargs).

The class is instantiated once per worker with ``kwargs`` (moved to the device when it has
``.to``) and called per batch through its ``encode`` method, else ``__call__`` (NeMo's
``encoder_config`` convention). Input: for ``modality: text`` a list of strings; for
``modality: image`` a float tensor ``[B, 3, r, r]`` in [-1, 1] on the device (same resize
and centre crop as ``vae``). The result may be a tensor ``[B, ...]``; a pair
``(states [B, L, D], mask [B, L])`` (pad rows are then stripped unless
``store_pad_tokens``, NeMo semantics); an object with ``.parameters`` (a
DiagonalGaussianDistribution: stored as-is) or ``.latent_dist``.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from .base import EncoderOptions, TorchEncoder, import_dotted
from .vae import _image_size, load_image_rgb, resize_center_crop


class CustomOptions(EncoderOptions):
    cls: str = Field(description="Dotted path of the encoder class: package.module.Class")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the class")
    modality: Literal["text", "image"] = Field(default="text", description="What the class encodes")
    column: str | None = Field(default=None, description="Input column (default: caption for text, image_bytes for image)")
    output: str = Field(default="embedding", description="Output column")  # type: ignore[assignment]
    resolution: int = Field(default=512, ge=8, description="Image size (modality image)")
    store_pad_tokens: bool = Field(default=True, description="For (states, mask) results: keep pad rows")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(default="float32", description="Compute dtype (autocast)")
    storage_dtype: Literal["float16", "float32"] = Field(default="float32", description="dtype of the stored outputs")
    shape: list[int | None] | None = Field(default=None, description="Declared per-sample shape (None entries: variable)")
    output_format: Literal["bytes", "array"] = Field(default="bytes", description="bytes or array column")

    @field_validator("cls")
    @classmethod
    def _cls(cls, v):
        if "." not in v and ":" not in v:
            raise ValueError("must be a dotted path: package.module.Class")
        return v


class CustomEncoder(TorchEncoder):
    """Any importable encoder class (cls dotted path + kwargs), called via encode or __call__."""

    name = "custom"
    Options = CustomOptions

    @property
    def input_column(self) -> str:
        o = self.options
        return o.column or ("caption" if o.modality == "text" else "image_bytes")

    def required_columns(self):
        return [self.input_column]

    def output_columns(self):
        return {self.options.output: {"dtype": self.options.storage_dtype, "shape": self.options.shape}}

    def identity(self):
        o = self.options
        return {
            "type": self.name, "class": o.cls, "kwargs": o.kwargs, "modality": o.modality,
            "resolution": o.resolution if o.modality == "image" else None,
            "store_pad_tokens": o.store_pad_tokens, "dtype": o.dtype, "storage_dtype": o.storage_dtype,
            "outputs": self.output_columns(),
        }

    def load(self, device):
        klass = import_dotted(self.options.cls)
        obj = klass(**self.options.kwargs)
        if hasattr(obj, "eval"):
            obj = obj.eval()
        if hasattr(obj, "to"):
            try:
                obj = obj.to(device)
            except TypeError:
                pass
        fn = getattr(obj, "encode", None)
        self._fn = fn if callable(fn) else obj
        if not callable(self._fn):
            raise TypeError(f"{self.options.cls} has neither encode() nor __call__")
        self.model = obj

    def reject_rows(self, df):
        if self.options.modality == "text":
            return super().reject_rows(df)
        reasons, msgs = [None] * df.height, [None] * df.height
        for i, d in enumerate(df[self.input_column].to_list()):
            if _image_size(d) is None:
                reasons[i], msgs[i] = "undecodable_image", "cannot read the image"
        return reasons, msgs

    def prepare(self, rows: pl.DataFrame):
        import torch

        col = rows[self.input_column]
        if self.options.modality == "text":
            return {"x": [t if isinstance(t, str) else "" for t in col.cast(pl.String).to_list()]}
        r = self.options.resolution
        arr = np.stack([resize_center_crop(load_image_rgb(d, r), r) for d in col.to_list()])
        return {"x": self.pin(torch.from_numpy(arr))}

    def forward(self, batch):
        import torch

        x = batch["x"]
        if isinstance(x, torch.Tensor):
            x = self.to_device(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with self.autocast():
            res = self._fn(x)
        if hasattr(res, "latent_dist"):
            res = res.latent_dist
        if hasattr(res, "parameters") and not callable(res.parameters):
            res = res.parameters
        if isinstance(res, (tuple, list)) and len(res) == 2 and all(isinstance(t, torch.Tensor) for t in res):
            states, mask = res
            if not self.options.store_pad_tokens:
                return {self.options.output: [states[i][mask[i] == 1] for i in range(states.shape[0])]}
            res = states
        if not isinstance(res, torch.Tensor):
            res = torch.as_tensor(np.asarray(res))
        return {self.options.output: res}

    @property
    def output_format(self) -> str:
        return self.options.output_format
