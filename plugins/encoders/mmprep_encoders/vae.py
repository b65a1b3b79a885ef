"""The ``vae`` encoder: diffusers AutoencoderKL latents at one or more square resolutions."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from mmprep.hashing import hash_strings

from .base import EncoderOptions, TorchEncoder, read_config, weights_hash


class VaeOptions(EncoderOptions):
    model: str = Field(description="diffusers AutoencoderKL: hub id or local path")
    subfolder: str | None = Field(default=None, description="Sub-folder of the model repo (e.g. 'vae')")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit)")
    image_column: str = Field(default="image_bytes", description="Column with encoded image bytes")
    resolutions: list[int] = Field(default=[256, 512], min_length=1, description="Square sizes to encode at")
    outputs: list[str] | None = Field(default=None, description="Output column per resolution (default latents_<r>)")
    mode: Literal["sample", "mean", "params"] = Field(
        default="sample",
        description="sample: (mean + std*noise) x scaling_factor, noise seeded by key; mean: mean x scaling_factor; params: mean||logvar unscaled (NeMo)",
    )
    scaling_factor: float | None = Field(default=None, description="Override the model config's scaling_factor")
    small_images: Literal["upscale", "reject"] = Field(
        default="upscale", description="Images whose shorter side is below a resolution: upscale, or reject (too_small_for_encoder)"
    )
    draft: bool = Field(default=True, description="Let Pillow decode JPEGs DCT-downscaled when far larger than needed (faster)")
    channels_last: bool = Field(default=True, description="channels_last memory format for the VAE")

    @field_validator("resolutions")
    @classmethod
    def _res(cls, v):
        if any(r <= 0 or r % 8 for r in v):
            raise ValueError("resolutions must be positive multiples of 8")
        if len(set(v)) != len(v):
            raise ValueError("resolutions must be distinct")
        return v

    @model_validator(mode="after")
    def _outs(self):
        if self.outputs is not None and len(self.outputs) != len(self.resolutions):
            raise ValueError("outputs must name one column per resolution")
        return self


def load_image_rgb(data: bytes, size_hint: int | None = None, draft: bool = True):
    """Decode image bytes to an RGB Pillow image (JPEG draft mode when much larger than needed)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if draft and size_hint and im.format == "JPEG":
        w, h = im.size
        s = min(w, h)
        if s >= 2 * size_hint:
            scale = size_hint / s
            im.draft("RGB", (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
    return im.convert("RGB")


def resize_center_crop(im, r: int) -> np.ndarray:
    """Shorter side to ``r`` (bicubic, antialiased), centre crop r x r, uint8 HWC."""
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    if (w, h) != (r, r):
        nw, nh = max(r, round(w * r / s)), max(r, round(h * r / s))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (nw - r) // 2, (nh - r) // 2
        im = im.crop((left, top, left + r, top + r))
    return np.asarray(im, dtype=np.uint8)


class VaeEncoder(TorchEncoder):
    """Encode images to diffusers AutoencoderKL latents (sample/mean/params) at each resolution."""

    name = "vae"
    Options = VaeOptions

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        self._config: dict[str, Any] | None = None
        self._pool: ThreadPoolExecutor | None = None

    # ---- config-derived facts (no torch) ----
    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            o = self.options
            self._config = read_config(o.model, o.subfolder, o.revision)
        return self._config

    @property
    def scaling_factor(self) -> float:
        if self.options.scaling_factor is not None:
            return float(self.options.scaling_factor)
        return float(self.config.get("scaling_factor", 0.18215))

    @property
    def shift_factor(self) -> float | None:
        v = self.config.get("shift_factor")
        return float(v) if v is not None else None

    def column_names(self) -> list[str]:
        return self.options.outputs or [f"latents_{r}" for r in self.options.resolutions]

    def required_columns(self) -> list[str]:
        return [self.options.image_column]

    def output_columns(self) -> dict[str, dict[str, Any]]:
        cfg = self.config
        factor = 2 ** (len(cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
        c = int(cfg.get("latent_channels", 4)) * (2 if self.options.mode == "params" else 1)
        return {
            name: {"dtype": self.options.storage_dtype, "shape": [c, r // factor, r // factor]}
            for name, r in zip(self.column_names(), self.options.resolutions)
        }

    def identity(self) -> dict[str, Any]:
        o = self.options
        return {
            **self.base_identity(),
            "class": "diffusers.AutoencoderKL",
            "model": o.model,
            "subfolder": o.subfolder,
            "revision": o.revision,
            "weights": weights_hash(o.model, o.subfolder, o.revision),
            "resolutions": list(o.resolutions),
            "mode": o.mode,
            "scaling_factor": self.scaling_factor if o.mode != "params" else None,
            "shift_factor": self.shift_factor if o.mode != "params" else None,
            "small_images": o.small_images,
            "draft": o.draft,
            "seed": self.context.seed if o.mode == "sample" else None,
        }

    # ---- worker side ----
    def load(self, device: str) -> None:
        import torch
        from diffusers import AutoencoderKL

        o = self.options
        if o.dtype == "float16" and int(self.config.get("sample_size", 0)) >= 1024:
            warnings.warn(
                f"vae {o.model}: float16 compute overflows in SDXL-class VAEs (NaN latents); use bfloat16 or float32",
                stacklevel=2,
            )
        kw: dict[str, Any] = {}
        if o.subfolder:
            kw["subfolder"] = o.subfolder
        if o.revision:
            kw["revision"] = o.revision
        vae = AutoencoderKL.from_pretrained(o.model, **kw).eval().requires_grad_(False)
        vae.to(device)
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolutions
        if o.channels_last:
            vae.to(memory_format=torch.channels_last)
        self.model = vae
        self.start_pool()

    def start_pool(self) -> None:
        """Threads that decode and resize a batch's images (Pillow releases the GIL)."""
        threads = self.preprocess_threads()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mmprep-vae-decode") if threads > 1 else None

    def unload_extra(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def reject_rows(self, df: pl.DataFrame):
        """Null or undecodable images -> ``undecodable_image``; small ones -> ``too_small_for_encoder`` (policy reject)."""
        rmax = max(self.options.resolutions)
        reasons: list[str | None] = [None] * df.height
        msgs: list[str | None] = [None] * df.height
        for i, data in enumerate(df[self.options.image_column].to_list()):
            size = _image_size(data)
            if size is None:
                reasons[i] = "undecodable_image"
                msgs[i] = f"{self.options.image_column} is null" if data is None else "cannot read the image header"
            elif self.options.small_images == "reject" and min(size) < rmax:
                reasons[i] = "too_small_for_encoder"
                msgs[i] = f"{size[0]}x{size[1]} is smaller than {rmax}x{rmax}"
        return reasons, msgs

    def _one(self, data: bytes) -> list[np.ndarray]:
        o = self.options
        im = load_image_rgb(data, max(o.resolutions), o.draft)
        return [resize_center_crop(im, r) for r in o.resolutions]

    def prepare(self, rows: pl.DataFrame) -> dict[str, Any]:
        import torch

        o = self.options
        data = rows[o.image_column].to_list()
        per = list(self._pool.map(self._one, data)) if self._pool else [self._one(d) for d in data]
        batch: dict[str, Any] = {"n": len(data)}
        for k, r in enumerate(o.resolutions):
            arr = np.stack([p[k] for p in per])  # B,H,W,3 uint8
            batch[f"img{r}"] = self.pin(torch.from_numpy(arr))
        if o.mode == "sample":
            keys = rows["key"]
            c = int(self.config.get("latent_channels", 4))
            f = 2 ** (len(self.config.get("block_out_channels", [0, 0, 0, 0])) - 1)
            for r in o.resolutions:
                seeds = hash_strings(keys, seed=int(self.context.seed) * 65537 + r)
                noise = torch.empty((len(data), c, r // f, r // f), dtype=torch.float32)
                g = torch.Generator()
                for i, s in enumerate(seeds):
                    g.manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)
                    torch.randn((c, r // f, r // f), generator=g, out=noise[i])
                batch[f"noise{r}"] = self.pin(noise)
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        o = self.options
        out = {}
        for name, r in zip(self.column_names(), o.resolutions):
            x = self.to_device(batch[f"img{r}"])  # uint8 B,H,W,3 (4x less to copy than float)
            x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            if o.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                dist = self.model.encode(x).latent_dist
            params = dist.parameters.float()
            if o.mode == "params":
                out[name] = params
                continue
            mean, logvar = torch.chunk(params, 2, dim=1)
            if o.mode == "sample":
                std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
                lat = mean + std * self.to_device(batch[f"noise{r}"])
            else:
                lat = mean
            if self.shift_factor is not None:
                lat = lat - self.shift_factor
            out[name] = lat * self.scaling_factor
        return out


def _image_size(data: bytes | None) -> tuple[int, int] | None:
    if data is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None
