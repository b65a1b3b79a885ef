"""``mmprep init RECIPE DIR``: starter pipelines for the seed workflows.

Each recipe is a set of files (pipelines + a README saying how to run them) based on the
runnable recipes in ``examples/``. Inputs and models are ``${VAR:-default}`` placeholders,
so the files validate as written (``mmprep run FILE --dry-run`` once the inputs exist).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import MmprepError

LAVIDA_O = """\
# A LaViDa-O data config (the llava/train/train.py format), run as-is by mmprep (mmprep-llava
# translates it): each dataset becomes validated LLaVA payloads with stable ids, and a
# LaViDa-O data YAML pointing at the materialised files is written next to them.
datasets:
  - name: laion-t2i                       # text-to-image pairs from a LAION-style table
    json_path: ${T2I:-data/t2i.parquet}
    sampling_strategy: random:50%         # all | first:N | end:N | random:N | dup:N (N may be P%)
    preprocess_fn: preproces_text_to_image_generation_s3
    process_fn_kwargs: {random_caption_keys: [caption], no_drop_keys: []}
    columns: [s3_path, caption, fltLaionAesthScore, intHeight, intWidth]
    aes_cutoff: 5.0
    min_size: 512
    length_group: t2i
  - name: und                             # understanding conversations (LLaVA JSON lines)
    json_path: ${UND:-data/und.jsonl}
    preprocess_fn: preproces_und_mammoth_si_10M
    process_fn_kwargs: {s3_prefix: "${S3_PREFIX:-s3://my-bucket/}"}
    length_group: und
weights: {t2i: 250, und: 100}
"""

MICRO_STAGE1 = """\
# micro_diffusion stage 1 (prepare/*/convert.py): images + captions -> raw MDS.
# Drops images whose shorter side is < 256 and downscales the shorter side to 512; columns as
# micro_diffusion writes them: {width: int32, height: int32, jpg: jpeg, caption: str}.
# Input: a parquet table with an image path/URL column and a caption column.
datasets:
  - name: images
    source:
      type: parquet
      path: ${IMAGES:-data/images.parquet}
      # rename: {your_path_column: image_path, your_caption_column: caption}
media:
  root: ${IMAGE_ROOT:-data}        # relative image paths resolve against this directory
  min_size: 256
  resize: downscale-shorter
  size: 512
  format: jpeg
  quality: 95
write:
  - type: mds
    path: mds
    preset: raw
    size_limit: 268435456          # 256 MiB shards, as micro_diffusion
run: {workers: 4, samples_per_unit: 10000}
"""

MICRO_STAGE2 = """\
# micro_diffusion stage 2 (prepare/*/precompute.py): raw MDS -> latents MDS its latents loader
# reads: caption, caption_latents, latents_256, latents_512 (float16 raw bytes).
# Models: an AutoencoderKL folder or hub id (SDXL VAE) and a CLIPTextModel + tokenizer.
datasets:
  - name: stage1
    source: {type: mds, path: "${STAGE1:-out/stage1/mds}"}
encode:
  - type: vae
    model: "${VAE:-stabilityai/sdxl-vae}"
    resolutions: [256, 512]
    outputs: [latents_256, latents_512]
    mode: sample                   # x scaling_factor; noise seeded per sample key
    dtype: bfloat16                # fp16 overflows in the SDXL VAE
    storage_dtype: float16
    batch_size: 32
  - type: clip-text
    model: "${TEXT_ENCODER:-openai/clip-vit-large-patch14}"
    columns: [caption]
    outputs: [caption_latents]
    max_length: 77
    storage_dtype: float16
    batch_size: 128
write:
  - {type: mds, path: mds-latents, preset: latents}
run: {workers: 1, device: auto, seed: 0}
"""

NEMO_PIPELINE = """\
# NeMo multimodal dataprep steps 2-5 in one run: parquet of image URLs/paths + captions ->
# media stage (fetch, decode, check, resize) -> WebDataset tars with exactly
# SAMPLES_PER_SHARD samples per shard (NeMo's tar_chunk_size) -> wdinfo.pkl.
datasets:
  - name: images
    source:
      type: parquet
      path: ${IMAGES:-data/images.parquet}
      rename: {URL: image_path, TEXT: caption}   # your columns -> the shared vocabulary
media:
  min_size: 256
  resize: center-crop
  size: 512
  format: jpeg
  quality: 95
  threads: 32
write:
  - type: webdataset
    path: tarfiles_reorganized
    columns: [image_bytes, caption]
    samples_per_shard: ${SAMPLES_PER_SHARD:-1000}
    wdinfo: true
run: {workers: 4, samples_per_unit: 10000}
"""

NEMO_PRECACHE = """\
# NeMo precaching (a NeMo precache config, accepted as-is: mmprep-encoders translates it).
# Reads the shards pipeline.yaml wrote and stores one .pickle per sample holding the encodings
# (float16 with precision 16), in tars of tar_chunk_size samples, plus wdinfo.pkl.
batch_size_per_GPU: 16
save_original_in_tar: false
pickle_encodings: true
input_dir: "${IN:-out/nemo/tarfiles_reorganized}"
output_dir: "${OUT:-out/nemo-precached}"
tar_chunk_size: "${CHUNK:-1000}"
encodings:
  - modality: image
    extension: jpg
    key: autoencoderkl_image
    precision: 16
    encoder_config:
      cls: nemo.collections.multimodal.models.text_to_image.stable_diffusion.ldm.autoencoder.AutoencoderKL
      from_pretrained: "${VAE:-stabilityai/sd-vae-ft-mse}"
      resolution: "${RES:-512}"
  - modality: text
    extension: txt
    key: clip-vit-large-patch14_text
    precision: 16
    encoder_config:
      cls: nemo.collections.multimodal.modules.stable_diffusion.encoders.modules.FrozenCLIPEmbedder
      version: "${CLIP:-openai/clip-vit-large-patch14}"
      max_length: 77
"""

PROCLIP = """\
# ProCLIP / LLM2CLIP: LLM mean-pooled embeddings of caption fields of existing WebDataset
# shards, written as sidecar tars <shard>_text_embeddings.tar joined by __key__ (raw float32
# bytes in members <key>.<field>), same keys in the same order as the input shards.
datasets:
  - name: shards
    source:
      type: webdataset
      path: "${SHARDS:-data/*.tar}"
      json_mode: flatten            # fields of <key>.json become columns
encode:
  - type: llm-mean
    model: "${LLM:-meta-llama/Meta-Llama-3-8B-Instruct}"
    columns: [shortSV_captions, longSV_captions]
    outputs: [shortSV_captions, longSV_captions]
    max_length: 512
    dtype: bfloat16
    storage_dtype: float32
    batch_size: 32
write:
  - type: webdataset
    path: embeddings
    mode: sidecar
    columns: [shortSV_captions, longSV_captions]
    array_format: raw
    raw_dtype: float32
run: {workers: 1, device: auto}
"""

IMG2DATASET = """\
# img2dataset-style download: a parquet of URLs + captions -> fetched, checked, resized images
# in WebDataset tars (<key>.jpg, <key>.txt, <key>.json-like metadata) plus a parquet of the
# metadata of every written sample. Failed downloads are counted per reason in the manifest;
# rerun with --retry-failed to redo units with retryable failures (timeouts, 5xx, 429).
datasets:
  - name: laion
    source:
      type: parquet
      path: ${URLS:-data/urls.parquet}
      rename: {URL: image_path, TEXT: caption}   # your columns -> the shared vocabulary
    filters:
      - {type: not-null, columns: [image_path, caption]}
media:
  threads: 64                       # concurrent downloads per worker
  per_host: 8
  retries: 3
  min_size: 64
  resize: keep-ratio-largest        # img2dataset --resize_mode keep_ratio_largest
  size: 512
  format: jpeg
  quality: 95
  hash: sha256
write:
  - type: webdataset
    path: shards
    columns: [image_bytes, caption, width, height, sha256]
    samples_per_shard: 10000
  - type: parquet
    path: metadata
    exclude: [image_bytes]
run: {workers: 8, samples_per_unit: 10000}
"""

RECIPES: dict[str, dict] = {
    "lavida-o": {
        "help": "LaViDa-O data YAML -> validated LLaVA payloads + a LaViDa-O data YAML (needs mmprep-llava)",
        "files": {"data.yaml": LAVIDA_O},
        "run": ["T2I=data/t2i.parquet UND=data/und.jsonl mmprep run data.yaml --out out/lavida-o",
                "mmprep preview out/lavida-o"],
    },
    "micro-diffusion": {
        "help": "images -> raw MDS (min 256, shorter side 512) -> SDXL-VAE + CLIP latents MDS (needs mmprep-mds, mmprep-encoders)",
        "files": {"stage1.yaml": MICRO_STAGE1, "stage2.yaml": MICRO_STAGE2},
        "run": ["IMAGES=data/images.parquet IMAGE_ROOT=data mmprep run stage1.yaml --out out/stage1",
                "STAGE1=out/stage1/mds VAE=stabilityai/sdxl-vae TEXT_ENCODER=openai/clip-vit-large-patch14 mmprep run stage2.yaml --out out/stage2"],
    },
    "nemo": {
        "help": "parquet of URLs -> WebDataset tars of exactly N samples + wdinfo.pkl -> NeMo precached encodings (needs mmprep-webdataset, mmprep-encoders)",
        "files": {"pipeline.yaml": NEMO_PIPELINE, "precache.yaml": NEMO_PRECACHE},
        "run": ["IMAGES=data/images.parquet SAMPLES_PER_SHARD=1000 mmprep run pipeline.yaml --out out/nemo",
                "IN=out/nemo/tarfiles_reorganized VAE=... CLIP=... mmprep run precache.yaml --out out/nemo-precached"],
    },
    "proclip": {
        "help": "LLM text embeddings of caption fields of existing WebDataset shards as sidecar tars (needs mmprep-webdataset, mmprep-encoders)",
        "files": {"embeddings.yaml": PROCLIP},
        "run": ["SHARDS='data/*.tar' LLM=path/to/llm mmprep run embeddings.yaml --out out/proclip"],
    },
    "img2dataset": {
        "help": "img2dataset-style download: parquet of URLs -> media stage -> WebDataset shards + metadata parquet (needs mmprep-webdataset)",
        "files": {"pipeline.yaml": IMG2DATASET},
        "run": ["URLS=data/urls.parquet mmprep run pipeline.yaml --out out/img2dataset --dry-run=measure",
                "URLS=data/urls.parquet mmprep run pipeline.yaml --out out/img2dataset",
                "mmprep preview out/img2dataset"],
    },
}


def readme(name: str) -> str:
    r = RECIPES[name]
    lines = [f"# mmprep recipe: {name}", "", r["help"] + ".", "", "Run (from this directory):", "", "```sh"]
    lines += r["run"]
    lines += ["```", "", "Check a pipeline first with `mmprep run FILE --dry-run` (add `=measure` for a time estimate);",
              "every `${VAR:-default}` in the files can be set in the environment.", ""]
    return "\n".join(lines)


def write_recipe(name: str, directory: str | Path, force: bool = False) -> list[Path]:
    """Write recipe ``name`` into ``directory``; refuse to overwrite files unless ``force``."""
    if name not in RECIPES:
        raise MmprepError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    d = Path(directory)
    files = {**RECIPES[name]["files"], "README.md": readme(name)}
    clash = [f for f in files if (d / f).exists()]
    if clash and not force:
        raise MmprepError(f"{d}: {', '.join(clash)} already exist (use --force to overwrite)")
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for fname, text in files.items():
        (d / fname).write_text(text)
        out.append(d / fname)
    return out


def configure_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", choices=list(RECIPES), help="seed workflow: " + ", ".join(RECIPES))
    p.add_argument("dir", nargs="?", help="directory to write the starter files into")
    p.add_argument("--list", action="store_true", help="list the recipes")
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def run_init(args: argparse.Namespace) -> int:
    if args.list or not args.recipe:
        for name, r in RECIPES.items():
            print(f"{name:<16} {r['help']}")
        return 0
    if not args.dir:
        raise MmprepError("mmprep init RECIPE DIR: DIR is missing")
    files = write_recipe(args.recipe, args.dir, args.force)
    for f in files:
        print(f)
    print(f"mmprep init: wrote the {args.recipe} recipe to {args.dir}; see {Path(args.dir) / 'README.md'}", file=sys.stderr)
    for line in RECIPES[args.recipe]["run"]:
        print(f"  {line}", file=sys.stderr)
    return 0
