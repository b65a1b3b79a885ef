"""Encoder throughput: mmprep vs a micro_diffusion-style loop vs model-only forward.

VAE: the real SDXL-VAE architecture (config only, random weights), JPEG inputs of realistic
size (random crops of generated photos-like images, 600-1600 px), at 256² and 512², bf16.
  (a) mmprep ``vae`` encoder end to end (decode, resize, crop, prefetch, encode, bytes out)
  (b) micro_diffusion-style: torch DataLoader (Pillow decode + resize + crop), batch 32,
      autocast bf16, ``latent_dist.sample() * scaling_factor``
  (c) model-only forward on pre-made tensors (the ceiling)
Text: CLIP-L-sized and T5-sized random-weight models (a tokenizer of the right vocab size is
made in memory), captions/s through mmprep vs a plain tokenise+forward loop.

    python bench/encoders.py --device cpu --count 16 --res 256 --text-count 64
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import polars as pl

SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, scaling_factor=0.13025,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def _dt():
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _DT(dict):
    def __missing__(self, k):
        self.update(_dt())
        return self[k]


DT = _DT()


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(600, 1600)), int(rng.integers(600, 1600))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([np.sin(x / (20 + i)) * 100 + 128, np.cos(y / 30) * 100 + 128, (x + y) % 256], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_vae(args, tmp: Path, images: list[bytes]) -> list[tuple]:
    import torch
    from diffusers import AutoencoderKL

    from mmprep import Context
    from mmprep_encoders.vae import VaeEncoder, load_image_rgb, resize_center_crop

    d = tmp / "sdxl-vae"
    if not d.exists():
        torch.manual_seed(0)
        AutoencoderKL(**SDXL_VAE).save_pretrained(d)
    rows = []
    dev = args.device
    for r in args.res:
        df = pl.DataFrame({"key": [f"k{i:06d}" for i in range(len(images))], "image_bytes": images},
                          schema={"key": pl.String, "image_bytes": pl.Binary})
        # (a) mmprep
        enc = VaeEncoder(VaeEncoder.Options(model=str(d), resolutions=[r], batch_size=args.batch, dtype=args.dtype,
                                            device=dev), Context())
        enc.setup(dev)
        enc.encode(df.head(min(2, len(images))))  # warm-up
        sync(dev)
        t = time.perf_counter()
        enc.encode(df)
        sync(dev)
        ta = time.perf_counter() - t
        # (b) micro_diffusion-style loop
        vae = AutoencoderKL.from_pretrained(d).eval().to(dev)

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                a = resize_center_crop(load_image_rgb(images[i], None, draft=False), r)
                return torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1

        dl = torch.utils.data.DataLoader(DS(), batch_size=32, num_workers=args.loader_workers,
                                         pin_memory=dev.startswith("cuda"))
        devtype = "cuda" if dev.startswith("cuda") else "cpu"
        t = time.perf_counter()
        with torch.no_grad():
            for x in dl:
                with torch.autocast(devtype, dtype=DT[args.dtype], enabled=args.dtype != "float32"):
                    lat = vae.encode(x.to(dev)).latent_dist.sample() * vae.config.scaling_factor
                lat.cpu()
        sync(dev)
        tb = time.perf_counter() - t
        # (c) model only on pre-made tensors
        x = torch.randn(min(args.batch, len(images)), 3, r, r, device=dev).contiguous(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        n_batches = max(1, len(images) // x.shape[0])
        with torch.inference_mode(), torch.autocast(devtype, dtype=DT[args.dtype], enabled=args.dtype != "float32"):
            vae.encode(x[:1])
            sync(dev)
            t = time.perf_counter()
            for _ in range(n_batches):
                vae.encode(x).latent_dist.mean
            sync(dev)
        tc = (time.perf_counter() - t) * len(images) / (n_batches * x.shape[0])
        n = len(images)
        rows.append((f"VAE SDXL {r}²", n, n / ta, n / tb, n / tc))
        del enc, vae
    return rows


def make_tokenizer_dir(d: Path, vocab_size: int, kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<t{i}>": i for i in range(vocab_size - 300)}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz ,.'"):
        vocab[ch] = len(vocab)
    vocab["<pad>"], vocab["</s>"], vocab["<unk>"] = len(vocab), len(vocab) + 1, len(vocab) + 2
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)
    return vocab


def bench_text(args, tmp: Path) -> list[tuple]:
    import torch
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from mmprep import Context
    from mmprep_encoders.text import ClipTextEncoder, T5TextEncoder

    rng = np.random.default_rng(0)
    words = "a photo of the cat dog car on in with red blue green small large near sea house".split()
    caps = [" ".join(rng.choice(words, size=int(rng.integers(5, 30)))) for _ in range(args.text_count)]
    df = pl.DataFrame({"key": [f"c{i}" for i in range(len(caps))], "caption": caps})
    rows = []
    dev = args.device
    specs = [
        ("CLIP-L text", ClipTextEncoder, CLIPTextModel, CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                                     num_hidden_layers=12, num_attention_heads=12,
                                                                     max_position_embeddings=77), 77),
        ("T5-base-sized", T5TextEncoder, T5EncoderModel, T5Config(vocab_size=32128, d_model=768, d_ff=3072, d_kv=64,
                                                                  num_layers=12, num_heads=12), 128),
    ]
    for label, Enc, Model, cfg, L in specs:
        d = tmp / label.replace(" ", "_")
        if not d.exists():
            torch.manual_seed(0)
            Model(cfg).save_pretrained(d)
            make_tokenizer_dir(d, cfg.vocab_size, label)
        enc = Enc(Enc.Options(model=str(d), max_length=L, batch_size=args.text_batch, dtype=args.dtype, device=dev), Context())
        enc.setup(dev)
        enc.encode(df.head(2))
        sync(dev)
        t = time.perf_counter()
        enc.encode(df)
        sync(dev)
        ta = time.perf_counter() - t
        tok = AutoTokenizer.from_pretrained(d)
        model = Model.from_pretrained(d).eval().to(dev)
        devtype = "cuda" if dev.startswith("cuda") else "cpu"
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast(devtype, dtype=DT[args.dtype], enabled=args.dtype != "float32"):
            for i in range(0, len(caps), args.text_batch):
                ids = tok(caps[i : i + args.text_batch], padding="max_length", max_length=L, truncation=True,
                          return_tensors="pt").to(dev)
                model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state.half().cpu()
        sync(dev)
        tb = time.perf_counter() - t
        rows.append((label, len(caps), len(caps) / ta, len(caps) / tb, None))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--count", type=int, default=5000, help="JPEG inputs for the VAE benchmark")
    ap.add_argument("--res", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--loader-workers", type=int, default=8)
    ap.add_argument("--text-count", type=int, default=4096)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="compute dtype of every path (bf16 is emulated and very slow on AVX2-only CPUs)")
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args(argv)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="mmprep-bench-enc-"))
    rows = []
    if not args.skip_vae:
        images = make_jpegs(args.count)
        rows += bench_vae(args, tmp, images)
    if not args.skip_text:
        rows += bench_text(args, tmp)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    print(f"device: {dev}; command: {' '.join(sys.argv)}")
    print("| workload | n | (a) mmprep /s | (b) plain loop /s | (c) model only /s | a/b | a/c |")
    print("|---|---|---|---|---|---|---|")
    for label, n, a, b, c in rows:
        print(f"| {label} | {n} | {a:.2f} | {b:.2f} | {'' if c is None else f'{c:.2f}'} | {a / b:.2f} | "
              f"{'' if c is None else f'{a / c:.2f}'} |")


if __name__ == "__main__":
    main()
