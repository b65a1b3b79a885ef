"""NeMo multimodal precache YAML -> mmprep pipeline (the ``translate_config`` hook).

Accepted as-is: ``batch_size_per_GPU``, ``dataloader_num_workers``, ``save_original_in_tar``
(bool or a list of modalities, as NeMo), ``pickle_encodings``, ``lightning`` (``devices`` →
run.workers when an int) and ``encodings: [{modality, extension, key, precision, store_pad_tokens,
encoder_config: {cls, ...}}]``. NeMo passes the input shards and output dir on its command
line; here they are keys of the same file: ``input_dir`` (a folder: its ``*.tar``) or
``input_shards`` (paths/globs/brace patterns), ``output_dir`` and ``tar_chunk_size``
(samples per output tar; default 1000). ``${ENV}`` interpolation works as in every pipeline.

``encoder_config.cls`` mapping: ``...AutoencoderKL`` → ``vae`` (mode ``params``, resolution
512, the model from ``from_pretrained``/``pretrained_model_name_or_path``/``model``, which
must be a diffusers folder or hub id); ``...FrozenCLIPEmbedder`` → ``clip-text`` (``version``,
``max_length``); T5 encoders (class name containing ``T5``) → ``t5`` (``encoder_path``/``version``,
``max_seq_len``/``max_length``, ``store_pad_tokens``); any other path that imports here →
``custom``; anything else is a config error naming the supported classes.

Output: the ``webdataset`` writer in ``layout: nemo-precache`` (one ``<key>.pickle`` dict of
numpy arrays per sample, exact-size tars named ``t0_r0_<n>.tar`` and ``wdinfo.pkl``).
The writer takes one ``precision`` for all encodings: the highest requested one is used
(each encoder still computes and stores its own precision before that cast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmprep import ConfigError

NEMO_KEYS = ("batch_size_per_GPU", "dataloader_num_workers", "save_original_in_tar", "pickle_encodings")
SUPPORTED = "AutoencoderKL, FrozenCLIPEmbedder, T5 encoders (…T5Encoder…), or an importable package.module.Class"


def is_nemo_precache(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and "datasets" not in doc
        and isinstance(doc.get("encodings"), list)
        and any(k in doc for k in NEMO_KEYS)
    )


def _model_of(cfg: dict[str, Any], *keys: str, default: str | None = None) -> str | None:
    for k in keys:
        if cfg.get(k):
            return str(cfg[k])
    return default


def _encoder(i: int, enc: dict[str, Any], batch_size: int, threads: int, errors: list[str]) -> dict[str, Any] | None:
    p = f"encodings[{i}]"
    for k in ("modality", "key"):
        if k not in enc:
            errors.append(f"{p}.{k}: required")
            return None
    cfg = dict(enc.get("encoder_config") or {})
    cls = str(cfg.pop("cls", "") or "")
    if not cls:
        errors.append(f"{p}.encoder_config.cls: required")
        return None
    precision = enc.get("precision", 32)
    if str(precision) not in ("16", "32"):
        errors.append(f"{p}.precision: must be 16 or 32")
        return None
    storage = "float16" if str(precision) == "16" else "float32"
    key = str(enc["key"])
    short = cls.rsplit(".", 1)[-1]
    common = {"batch_size": batch_size, "storage_dtype": storage, "output": "array"}
    modality = str(enc["modality"])
    if short == "AutoencoderKL":
        model = _model_of(cfg, "from_pretrained", "pretrained_model_name_or_path", "model")
        if not model:
            errors.append(f"{p}.encoder_config.from_pretrained: required (a diffusers AutoencoderKL folder or hub id)")
            return None
        if model.endswith((".bin", ".ckpt", ".pt", ".pth", ".safetensors")):
            errors.append(
                f"{p}.encoder_config.from_pretrained: {model!r} is a bare checkpoint file; mmprep's vae loads a "
                "diffusers AutoencoderKL folder (config.json + weights) or hub id"
            )
            return None
        return {"type": "vae", "model": model, "subfolder": cfg.get("subfolder"), "mode": "params",
                "resolutions": [int(cfg.get("resolution", 512))], "outputs": [key],
                "preprocess_threads": threads, **common}
    if short == "FrozenCLIPEmbedder":
        return {"type": "clip-text", "model": _model_of(cfg, "version", "model", default="openai/clip-vit-large-patch14"),
                "max_length": int(cfg.get("max_length", 77)), "columns": ["caption"], "outputs": [key], **common}
    if "T5" in short:
        model = _model_of(cfg, "encoder_path", "version", "model", "pretrained_model_name_or_path")
        if not model:
            errors.append(f"{p}.encoder_config.encoder_path: required (T5 encoder folder or hub id)")
            return None
        return {"type": "t5", "model": model, "max_length": int(cfg.get("max_seq_len", cfg.get("max_length", 512))),
                "store_pad_tokens": bool(enc.get("store_pad_tokens", True)), "columns": ["caption"], "outputs": [key],
                **common}
    from .base import import_dotted

    try:
        import_dotted(cls)
    except Exception as e:  # noqa: BLE001
        errors.append(f"{p}.encoder_config.cls: {cls!r} cannot be mapped or imported ({type(e).__name__}); supported: {SUPPORTED}")
        return None
    return {"type": "custom", "cls": cls, "kwargs": cfg, "modality": "image" if modality.startswith("image") else "text",
            "output": key, "store_pad_tokens": bool(enc.get("store_pad_tokens", True)), "batch_size": batch_size,
            "storage_dtype": storage, "output_format": "array"}


def translate(doc: dict[str, Any], path: str) -> dict[str, Any]:
    errors: list[str] = []
    base = Path(path).parent if path and Path(path).suffix else Path(path or ".")
    known = set(NEMO_KEYS) | {"encodings", "lightning", "input_dir", "input_shards", "output_dir", "tar_chunk_size", "run"}
    for k in doc:
        if k not in known:
            errors.append(f"{k}: unknown key in a NeMo precache file (known: {', '.join(sorted(known))})")
    if "input_dir" in doc:
        shards: Any = str(Path(str(doc["input_dir"])) / "*.tar")
    elif "input_shards" in doc:
        shards = doc["input_shards"]
    else:
        errors.append("input_dir: required (folder of input .tar shards), or input_shards")
        shards = None
    bs = int(doc.get("batch_size_per_GPU", 32))
    threads = int(doc.get("dataloader_num_workers", 0) or 0)
    image_exts, text_exts = [], []
    encoders = []
    for i, enc in enumerate(doc.get("encodings") or []):
        if not isinstance(enc, dict):
            errors.append(f"encodings[{i}]: must be a mapping")
            continue
        e = _encoder(i, enc, bs, threads, errors)
        if e is None:
            continue
        encoders.append(e)
        ext = str(enc.get("extension", "jpg" if str(enc["modality"]).startswith("image") else "txt"))
        (image_exts if str(enc["modality"]).startswith("image") else text_exts).append(ext)
    if not encoders and not errors:
        errors.append("encodings: at least one encoding is required")
    if errors:
        raise ConfigError(errors)
    save = doc.get("save_original_in_tar") or False
    save_any = bool(save) if not isinstance(save, list) else bool(save)
    precision = 32 if any(e.get("storage_dtype") == "float32" for e in encoders) else 16
    source: dict[str, Any] = {"type": "webdataset", "path": shards, "require": list(dict.fromkeys(image_exts + text_exts))}
    if image_exts:
        source["image_extensions"] = list(dict.fromkeys(image_exts + ["jpg", "jpeg", "png", "webp"]))
    if text_exts:
        source["text"] = {text_exts[0]: "caption"}
    keys = [e.get("outputs", [e.get("output")])[0] for e in encoders]
    writer = {
        "type": "webdataset", "path": "", "layout": "nemo-precache", "encodings": keys,
        "precision": precision, "pickle_encodings": bool(doc.get("pickle_encodings", True)),
        "save_original_in_tar": save_any, "samples_per_shard": int(doc.get("tar_chunk_size", 1000)),
        "shard_pattern": "t{task}_r{rank}_{n}.tar", "pattern_vars": {"task": 0, "rank": 0}, "wdinfo": True,
    }
    run: dict[str, Any] = dict(doc.get("run") or {})
    if doc.get("output_dir"):
        out = Path(str(doc["output_dir"]))
        run.setdefault("out", str(out if out.is_absolute() else (base / out).resolve()))
    devices = (doc.get("lightning") or {}).get("devices")
    if isinstance(devices, int) and devices > 0:
        run.setdefault("workers", devices)
    return {
        "datasets": [{"name": "nemo-precache", "source": source}],
        "encode": encoders,
        "write": [writer],
        "run": run,
    }
