"""Shared machinery of the torch encoders: device choice, batching with CPU prefetch,
pinned memory, per-sample finiteness checks, output serialisation and identity.

Nothing here imports torch at module level; ``torch`` is imported inside methods.

Output contract (shared with the mds and webdataset writers): by default each output is a
``pl.Binary`` column holding the raw little-endian bytes of one sample's array (C order),
and :meth:`TorchEncoder.output_columns` declares its ``dtype`` and ``shape`` (``None`` for
a variable dimension, e.g. T5 tokens without padding). With ``output: array`` the column
is a polars ``Array`` (fixed shape) or ``List`` of ``Array`` (variable first dimension).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from mmprep import REJECT_MESSAGE, REJECT_REASON, Encoder, Options

log = logging.getLogger("mmprep.encoders")

DTYPES = ("float32", "float16", "bfloat16")


class EncoderOptions(Options):
    """Options every torch encoder has."""

    device: str | None = Field(
        default=None,
        description="auto | cpu | cuda | cuda:N; default: the run's device (run.device)",
    )
    batch_size: int = Field(default=32, ge=1, description="Samples per forward pass")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="Compute dtype (autocast); auto: bfloat16 on CUDA, float32 on CPU (bf16 is emulated and ~10x slower on most CPUs); float32 disables autocast",
    )
    storage_dtype: Literal["float16", "float32"] = Field(default="float16", description="dtype of the stored outputs")
    output: Literal["bytes", "array"] = Field(
        default="bytes",
        description="bytes: binary column of raw little-endian values (+ declared dtype/shape); array: polars Array/List column",
    )
    compile: bool = Field(default=False, description="torch.compile the forward pass")
    sequential: bool = Field(
        default=False, description="Unload the model after each pass (bounds memory when several encoders run)"
    )
    prefetch: bool | None = Field(
        default=None,
        description="Prepare the next batch on CPU (decode/tokenise, pin) in a thread while the device computes; default: on for CUDA",
    )
    preprocess_threads: int = Field(
        default=0, ge=0, description="Threads decoding/resizing images of one batch; 0 = auto (min(8, CPUs) on CUDA, 1 on CPU)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if v is None:
            return v
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")


def resolve_device(device: str | None) -> str:
    """Map auto/None to cuda when available, else cpu; validate cuda:N."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# -- model files, hashing ---------------------------------------------------------------
_HASH_CACHE: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def local_model_dir(model: str, subfolder: str | None = None, revision: str | None = None) -> Path | None:
    """The local directory of a model: a path, or the hub cache snapshot (never downloads)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p / subfolder if subfolder else p
    if os.path.sep in model and model.count("/") > 1 or model.startswith((".", "~", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(model, revision=revision, local_files_only=True))
        return snap / subfolder if subfolder else snap
    except Exception:
        return None


def read_config(model: str, subfolder: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """config.json of a model (local path, hub cache, or a config-only hub download)."""
    d = local_model_dir(model, subfolder, revision)
    if d is not None and (d / "config.json").exists():
        return json.loads((d / "config.json").read_text())
    if Path(model).expanduser().exists() or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{model}: no config.json" + (f" in subfolder {subfolder!r}" if subfolder else ""))
    from huggingface_hub import hf_hub_download

    f = hf_hub_download(model, "config.json", subfolder=subfolder, revision=revision)
    return json.loads(Path(f).read_text())


def weights_hash(model: str, subfolder: str | None = None, revision: str | None = None) -> str:
    """sha256 over the model's weight files (safetensors/bin, sorted by name) and config.json.

    Cached per process by (path, size, mtime). A model only known by hub id and not in
    the local cache hashes as ``rev:<revision>``.
    """
    d = local_model_dir(model, subfolder, revision)
    if d is None or not d.is_dir():
        return f"rev:{revision or 'main'}"
    files = sorted(
        f for f in d.iterdir()
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name == "config.json")
    )
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
    return digest


def import_dotted(path: str) -> Any:
    """Import ``package.module.Name`` (or ``package.module:Name``)."""
    import importlib

    if ":" in path:
        mod, _, attr = path.partition(":")
    else:
        mod, _, attr = path.rpartition(".")
    if not mod:
        raise ImportError(f"{path!r} is not a dotted path (package.module.Class)")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# -- the base class ---------------------------------------------------------------------
class TorchEncoder(Encoder):
    """Base of the torch encoders (not registered)."""

    Options = EncoderOptions
    #: stats counters (kept per process, exposed by :meth:`stats`)
    _stat_names = ("encoded", "non_finite")

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        self.device: str | None = None
        self.model = None
        self._counters: dict[str, int] = {k: 0 for k in self._stat_names}
        self._compiled: Callable | None = None

    # ---- hooks for subclasses ----
    def load(self, device: str) -> None:  # pragma: no cover - abstract
        """Load ``self.model`` (and tokenizer...) on ``device``."""
        raise TypeError(f"{type(self).__name__} must implement load()")

    def prepare(self, rows: pl.DataFrame) -> dict[str, Any]:
        """CPU work for one batch (decode, tokenise); returns tensors (pinned on CUDA)."""
        raise TypeError(f"{type(self).__name__} must implement prepare()")

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Device work: returns {output column: tensor [B, ...] or list of [n_i, ...] tensors}."""
        raise TypeError(f"{type(self).__name__} must implement forward()")

    def reject_rows(self, df: pl.DataFrame) -> tuple[list[str | None], list[str | None]]:
        """Rows refused before encoding: (reason or None per row, message per row). Default: none."""
        return [None] * df.height, [None] * df.height

    # ---- engine API ----
    def setup(self, device: str) -> None:
        """Resolve the device and load the model once (lazily when ``sequential``)."""
        self.device = resolve_device(self.options.device or device)
        if not self.options.sequential:
            self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        if self.device is None:
            self.device = resolve_device(self.options.device)
        if self.model is None:
            import torch

            torch.set_grad_enabled(False)
            self.load(self.device)
            self._compiled = torch.compile(self.forward) if self.options.compile else self.forward

    def unload(self) -> None:
        """Free the model (and the CUDA cache)."""
        self.model = None
        self._compiled = None
        self.unload_extra()
        import gc

        gc.collect()
        if self.device and self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def unload_extra(self) -> None:
        """Subclasses drop other heavy state here."""

    @property
    def output_format(self) -> str:
        """'bytes' or 'array'."""
        return self.options.output

    @property
    def on_cuda(self) -> bool:
        return bool(self.device and self.device.startswith("cuda"))

    def autocast(self):
        import contextlib

        import torch

        dtype = self.compute_dtype
        if dtype == "float32":
            return contextlib.nullcontext()
        dev = "cuda" if self.on_cuda else "cpu"
        return torch.autocast(device_type=dev, dtype=torch_dtype(dtype))

    @property
    def compute_dtype(self) -> str:
        """The resolved compute dtype (``auto``: bfloat16 on CUDA, float32 on CPU)."""
        if self.options.dtype != "auto":
            return self.options.dtype
        return "bfloat16" if self.on_cuda else "float32"

    def pin(self, t):
        """Pin a CPU tensor when the device is CUDA (enables non_blocking copies)."""
        return t.pin_memory() if self.on_cuda else t

    def to_device(self, t):
        return t.to(self.device, non_blocking=self.on_cuda)

    def stats(self) -> dict[str, int]:
        """Counters since setup (encoded, non_finite, token truncations...)."""
        return dict(self._counters)

    def encode(self, df: pl.DataFrame) -> pl.DataFrame:
        """Encode the unit's rows in batches; add output columns; reject per sample."""
        import torch

        self._ensure_loaded()
        n = df.height
        reasons, messages = self.reject_rows(df)
        reasons, messages = list(reasons), list(messages)
        todo = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
        bs = self.options.batch_size
        chunks = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        results: dict[str, list[Any]] = {c: [None] * n for c in self.output_columns()}

        prefetch = self.options.prefetch if self.options.prefetch is not None else self.on_cuda
        pool = ThreadPoolExecutor(1, thread_name_prefix="mmprep-prefetch") if prefetch and len(chunks) > 1 else None
        try:
            pending = pool.submit(self.prepare, df[chunks[0]]) if (pool and chunks) else None
            for ci, idx in enumerate(chunks):
                if pool:
                    batch = pending.result()
                    pending = pool.submit(self.prepare, df[chunks[ci + 1]]) if ci + 1 < len(chunks) else None
                else:
                    batch = self.prepare(df[idx])
                with torch.inference_mode():
                    out = self._compiled(batch)
                    self._collect(out, idx, results, reasons, messages)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.options.sequential:
            self.unload()

        cols = [self._column(name, vals) for name, vals in results.items()]
        df = df.with_columns(cols)
        return _merge_rejects(df, reasons, messages)

    def _collect(self, out: dict[str, Any], idx: np.ndarray, results, reasons, messages) -> None:
        import torch

        np_dtype = np.dtype(self.options.storage_dtype).newbyteorder("<")
        tdt = torch_dtype(self.options.storage_dtype)
        for name, val in out.items():
            if isinstance(val, torch.Tensor):
                finite = torch.isfinite(val.float()).reshape(val.shape[0], -1).all(dim=1).cpu().numpy()
                arrs = val.to(tdt).cpu().numpy()
                items = [arrs[i] for i in range(arrs.shape[0])]
            else:  # list of per-sample tensors (variable length)
                finite = np.array([bool(torch.isfinite(v.float()).all()) for v in val], dtype=bool)
                items = [v.to(tdt).cpu().numpy() for v in val]
            for j, row in enumerate(idx):
                if not finite[j]:
                    if reasons[row] is None:
                        reasons[row] = "non_finite"
                        messages[row] = f"{self.name}: {name} has NaN/inf values"
                        self._counters["non_finite"] += 1
                    continue
                a = np.ascontiguousarray(items[j], dtype=np_dtype)
                results[name][row] = a.tobytes() if self.output_format == "bytes" else a
        self._counters["encoded"] += len(idx)

    def _column(self, name: str, vals: list[Any]) -> pl.Series:
        if self.output_format == "bytes":
            return pl.Series(name, vals, dtype=pl.Binary)
        spec = self.output_columns()[name]
        shape = spec["shape"] or []
        pdt = pl.Float16 if self.options.storage_dtype == "float16" else pl.Float32
        inner: Any = pdt
        fixed = [d for d in shape if d is not None]
        if None in shape:
            for d in reversed(shape[1:]):
                inner = pl.Array(inner, d)
            dtype = pl.List(inner)
            return pl.Series(name, [None if v is None else v for v in vals], dtype=dtype)
        dtype = pl.Array(pdt, tuple(fixed)) if fixed else pdt
        return pl.Series(name, vals, dtype=dtype)

    # ---- identity ----
    def base_identity(self) -> dict[str, Any]:
        o = self.options
        return {
            "type": self.name,
            "dtype": o.dtype,
            "storage_dtype": o.storage_dtype,
            "output": o.output,
            "outputs": self.output_columns(),
        }


def _merge_rejects(df: pl.DataFrame, reasons: list[str | None], messages: list[str | None]) -> pl.DataFrame:
    if not any(r is not None for r in reasons):
        return df
    r = pl.Series(REJECT_REASON, reasons, dtype=pl.String)
    m = pl.Series(REJECT_MESSAGE, messages, dtype=pl.String)
    had = df[REJECT_REASON].is_not_null() if REJECT_REASON in df.columns else pl.Series([False] * df.height)
    if REJECT_REASON in df.columns:
        r = df[REJECT_REASON].fill_null(r)
    if REJECT_MESSAGE in df.columns:
        m = pl.select(pl.when(had).then(df[REJECT_MESSAGE]).otherwise(m)).to_series()
    return df.with_columns(r.alias(REJECT_REASON), m.alias(REJECT_MESSAGE))


def batched(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
