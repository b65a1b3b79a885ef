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
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from mmprep import REJECT_MESSAGE, REJECT_REASON, Encoder, Options

log = logging.getLogger("mmprep.encoders")

DTYPES = ("float32", "float16", "bfloat16")
#: most bytes in one Arrow chunk of a binary output column (its offsets are int32)
CHUNK_BYTES = 2**31 - 1


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
        default=0,
        ge=0,
        description="Threads decoding/resizing images of one batch; 0 = auto: on CUDA the CPUs of this process divided among the host's workers (at most 32), on CPU 1",
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
    return _sha256(files, key)


def file_hash(path: Path) -> str:
    """sha256 of one weights file (cached per process by path, size and mtime)."""
    return _sha256([path], ((str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns),))


def _sha256(files: list[Path], key: tuple) -> str:
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
        """Device work, queued without syncing the device (no ``.item()``/``.tolist()``/``.cpu()``):
        returns {output column: tensor [B, ...], :class:`Ragged` (padded tensor + host lengths),
        or a list of [n_i, ...] tensors}. The base class casts, checks and copies the outputs."""
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

    def preprocess_threads(self) -> int:
        """Resolved ``preprocess_threads``: on CUDA, auto shares this process's CPUs among the
        host's worker processes (``MMPREP_LOCAL_WORKERS``, set by the local executor); on CPU
        the cores belong to the model's own forward pass, so auto is 1."""
        if self.options.preprocess_threads:
            return self.options.preprocess_threads
        if not self.on_cuda:
            return 1
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        workers = max(1, int(os.environ.get("MMPREP_LOCAL_WORKERS", "1") or 1))
        return max(1, min(32, cpus // workers))

    def pin(self, t):
        """Pin a CPU tensor when the device is CUDA (enables non_blocking copies)."""
        return t.pin_memory() if self.on_cuda else t

    def to_device(self, t):
        return t.to(self.device, non_blocking=self.on_cuda)

    def stats(self) -> dict[str, int]:
        """Counters since setup (encoded, non_finite, token truncations...)."""
        return dict(self._counters)

    def encode(self, df: pl.DataFrame) -> pl.DataFrame:
        """Encode the unit's rows in batches; add output columns; reject per sample.

        Two batches are in flight: batch k's outputs start copying to pinned host memory
        right after its forward pass is queued, and are gathered while the device runs batch
        k+1 (whose inputs the prefetch thread prepared during batch k), so the device never
        waits for the host between batches.
        """
        import torch

        self._ensure_loaded()
        n = df.height
        reasons, messages = self.reject_rows(df)
        reasons, messages = list(reasons), list(messages)
        todo = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
        bs = self.options.batch_size
        chunks = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        np_dtype = np.dtype(self.options.storage_dtype).newbyteorder("<")
        columns = {name: _Column(name, n, spec, np_dtype, self.output_format) for name, spec in self.output_columns().items()}

        prefetch = self.options.prefetch if self.options.prefetch is not None else self.on_cuda
        pool = ThreadPoolExecutor(1, thread_name_prefix="mmprep-prefetch") if prefetch and len(chunks) > 1 else None
        in_flight = None
        try:
            pending = pool.submit(self.prepare, df[chunks[0]]) if (pool and chunks) else None
            for ci, idx in enumerate(chunks):
                if pool:
                    batch = pending.result()
                    pending = pool.submit(self.prepare, df[chunks[ci + 1]]) if ci + 1 < len(chunks) else None
                else:
                    batch = self.prepare(df[idx])
                with torch.inference_mode():
                    staged = self._start_copy(self._compiled(batch), idx)
                del batch
                if in_flight is not None:
                    self._finish(in_flight, columns, reasons, messages)
                in_flight = staged
            if in_flight is not None:
                self._finish(in_flight, columns, reasons, messages)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.options.sequential:
            self.unload()
        df = df.with_columns(c.series() for c in columns.values())
        return _merge_rejects(df, reasons, messages)

    def _host(self, t):
        """Start copying a device tensor into pinned host memory (a CPU tensor is returned as is)."""
        import torch

        if t.device.type == "cpu":
            return t
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        h.copy_(t, non_blocking=True)
        return h

    def _start_copy(self, out: dict[str, Any], idx: np.ndarray) -> tuple:
        """Queue the cast to the storage dtype, a per-sample finiteness check and the copies to
        the host for one batch's outputs (tensor [B, ...], :class:`Ragged`, or a list of
        per-sample tensors); returns what :meth:`_finish` gathers once they are done.

        The check is on the stored values (a float32 value beyond float16's range is stored
        as inf, so it is caught too): a sample whose float32 sum is finite has only finite
        values; the few whose sum is not are checked value by value on the host, so a sum
        that merely overflows never rejects a sample.
        """
        import torch

        tdt = torch_dtype(self.options.storage_dtype)
        staged: dict[str, tuple] = {}
        for name, val in out.items():
            if isinstance(val, Ragged):
                # the sum covers the padding too: a row it flags is checked on its own rows only
                values, lengths = val.values.to(tdt), torch.as_tensor(val.lengths, dtype=torch.int64).cpu()
                sums = values.flatten(1).sum(1, dtype=torch.float32)
                staged[name] = ("ragged", self._host(torch.isfinite(sums)), self._host(values), lengths.numpy())
            elif isinstance(val, torch.Tensor):
                values = val.to(tdt)
                sums = values.flatten(1).sum(1, dtype=torch.float32) if values.dim() > 1 else values.float()
                staged[name] = ("dense", self._host(torch.isfinite(sums)), self._host(values))
            else:  # a list of per-sample tensors
                values = [v.to(tdt) for v in val]
                sums = torch.stack([v.sum(dtype=torch.float32) for v in values]) if values else torch.zeros(0)
                staged[name] = ("list", self._host(torch.isfinite(sums)), [self._host(v) for v in values])
        event = None
        if self.on_cuda:
            event = torch.cuda.Event()
            event.record()
        return staged, event, idx

    def _finish(self, in_flight: tuple, columns: dict[str, _Column], reasons, messages) -> None:
        staged, event, idx = in_flight
        if event is not None:
            event.synchronize()
        for name, item in staged.items():
            if name not in columns:
                raise KeyError(f"{self.name}: produced output {name!r}, which output_columns() does not declare")
            kind, finite = item[0], item[1].numpy().copy()
            if kind == "dense":
                values = item[2].numpy()
            elif kind == "ragged":
                host = item[2].numpy()
                values = [host[j, :m] for j, m in enumerate(item[3])]
            else:
                values = [v.numpy() for v in item[2]]
            for j in np.flatnonzero(~finite):
                finite[j] = bool(np.isfinite(values[j]).all())  # the sum overflowed, or a value is not finite
                row = idx[j]
                if not finite[j] and reasons[row] is None:
                    reasons[row] = "non_finite"
                    messages[row] = f"{self.name}: {name} has NaN/inf values (as {self.options.storage_dtype})"
                    self._counters["non_finite"] += 1
            columns[name].put(idx, values, finite, self.name)
        self._counters["encoded"] += len(idx)

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


class Ragged(NamedTuple):
    """Variable-length outputs of a batch as one padded tensor: sample i is
    ``values[i, :lengths[i]]`` (``lengths`` on the host). One copy to the host per batch
    instead of one per sample."""

    values: Any
    lengths: Any


class _Column:
    """One output column of a unit, gathered batch by batch in the storage dtype.

    Fixed shapes go into one contiguous array that becomes the column without another copy
    (an Arrow binary array over its buffer, or a polars Array); variable first dimensions
    are kept per sample and joined once. Samples never filled are null.
    """

    def __init__(self, name: str, n: int, spec: dict[str, Any], np_dtype: np.dtype, fmt: str):
        self.name, self.n, self.np_dtype, self.fmt = name, n, np_dtype, fmt
        self.shape = list(spec.get("shape") or [])
        self.fixed = None not in self.shape
        self.valid = np.zeros(n, dtype=bool)
        self.buf = np.empty((n, *self.shape), dtype=np_dtype) if self.fixed else None
        self.rows: list[np.ndarray | None] | None = None if self.fixed else [None] * n

    def put(self, idx: np.ndarray, values, ok: np.ndarray, encoder: str) -> None:
        rows = idx[ok]
        if self.fixed:
            dense = isinstance(values, np.ndarray)
            for v in (values[:1] if dense else values):
                if list(v.shape) != self.shape:
                    raise ValueError(f"{encoder}: output {self.name!r} has shape {list(v.shape)} per sample, declared {self.shape}")
            if not dense:
                values = np.stack(values) if len(values) else np.zeros((0, *self.shape), self.np_dtype)
            if ok.all() and len(idx) and idx[-1] - idx[0] == len(idx) - 1:
                self.buf[idx[0] : idx[-1] + 1] = values  # consecutive rows: one copy
            elif len(rows):
                self.buf[rows] = values[ok]
        else:
            for r, v in zip(rows, (v for v, k in zip(values, ok) if k)):
                if list(v.shape[1:]) != self.shape[1:]:
                    raise ValueError(f"{encoder}: output {self.name!r} has shape {list(v.shape)} per sample, declared {self.shape}")
                # a view of the batch's host copy (kept alive by it) when possible: joined once at the end
                self.rows[r] = v if v.dtype == self.np_dtype and v.flags.c_contiguous else np.ascontiguousarray(v, dtype=self.np_dtype)
        self.valid[rows] = True

    def series(self) -> pl.Series:
        if self.fmt == "bytes":
            return self._binary()
        if self.fixed:
            s = pl.Series(self.name, self.buf)
            if not self.valid.all():
                s = pl.select(pl.when(pl.Series(self.valid)).then(s)).to_series()
            return s.alias(self.name)
        inner: Any = pl.Float16 if self.np_dtype.itemsize == 2 else pl.Float32
        for d in reversed(self.shape[1:]):
            inner = pl.Array(inner, d)
        return pl.Series(self.name, self.rows, dtype=pl.List(inner))

    def _binary(self) -> pl.Series:
        import pyarrow as pa

        if self.fixed:
            rowbytes = int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize
            flat = self.buf.reshape(self.n, -1).view(np.uint8) if self.n else np.zeros((0, 0), np.uint8)
            per = max(1, CHUNK_BYTES // max(rowbytes, 1))
            chunks = []
            for start in range(0, self.n, per):
                part, valid = flat[start : start + per], self.valid[start : start + per]
                offsets = np.arange(part.shape[0] + 1, dtype=np.int32) * np.int32(rowbytes)
                chunks.append(_arrow_binary(pa.binary(), part.reshape(-1), offsets, valid))
            if not chunks:
                return pl.Series(self.name, [], dtype=pl.Binary)
            return pl.from_arrow(pa.chunked_array(chunks, type=pa.binary())).alias(self.name).cast(pl.Binary)
        sizes = np.array([0 if v is None else v.nbytes for v in self.rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        data = np.concatenate([v.reshape(-1).view(np.uint8) for v in self.rows if v is not None] or [np.zeros(0, np.uint8)])
        arr = _arrow_binary(pa.large_binary(), data, offsets, self.valid)
        return pl.from_arrow(arr).alias(self.name).cast(pl.Binary)


def _arrow_binary(typ, data: np.ndarray, offsets: np.ndarray, valid: np.ndarray):
    """An Arrow (large) binary array over ``data`` without copying it."""
    import pyarrow as pa

    nulls = int(len(valid) - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(typ, len(valid), [bitmap, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))],
                                 null_count=nulls)


def batched(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
