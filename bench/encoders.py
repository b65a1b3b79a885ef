"""Encoder throughput: mmprep vs a micro_diffusion-style loop vs model-only forward.

VAE: the real SDXL-VAE architecture (config only, random weights) on JPEG inputs of
realistic size (crops of 600-1600 px from generated photo-like images, ~500 KB each), bf16:
  (a)  mmprep ``vae`` encoder on an in-memory frame (decode, resize, crop, noise, prefetch,
       encode, finiteness check, bytes out)
  (a2) ``mmprep run`` end to end: parquet of JPEG bytes -> vae -> MDS (``--writer``): the
       whole run's wall time, plan, model load (it overlaps the first unit's read), units read
       ahead, writer, commit and finalize included; one worker
  (b)  micro_diffusion-style loop: torch DataLoader (Pillow decode + resize + crop, float
       tensors), batch 32, autocast, ``latent_dist.sample() * scaling_factor``
  (c)  model-only forward on pre-made device tensors (the ceiling)
  (d)  the host side alone: mmprep's decode + resize + crop with the same threads (what this
       machine's CPUs can feed, whatever the device)
Text: CLIP-L-sized and T5-base-sized random-weight models (a tokenizer with the right
vocabulary size made in memory), captions/s through mmprep vs a plain tokenise+forward loop.

Devices: ``cuda``/``cuda:N``; ``cpu`` (compute-bound, slow); ``sim``: a stand-in device for
the CPU-overhead part (bench/mmprep_benchsim.py): the forward pass becomes a GIL-free wait of
the time a GPU of ``--sim-vae-rate`` images/s at 512² (text: ``--sim-tflops``) would take;
everything on the host is real. On CUDA the GPU utilisation (nvidia-smi) is sampled during
each path; on sim it is the simulated device time over the wall time.

    python bench/encoders.py --device cuda --count 5000 --res 256 512
    python bench/encoders.py --device sim --count 600 --res 256 512 --text-count 2048
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np
import polars as pl
from mmprep_encoders.base import torch_dtype

HERE = Path(__file__).resolve().parent

SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, scaling_factor=0.13025,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


# -- inputs -------------------------------------------------------------------------------
def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEGs (quality 90) of 600-1600 px per side: random crops of 8 generated
    1600x1600 photo-like images (gradients, texture, noise), encoded on all cores."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1600, 0:1600].astype(np.float32)
    bases = []
    for i in range(8):
        img = np.stack([np.sin(x / (20 + 7 * i)) * 100 + 128, np.cos(y / (30 + 3 * i)) * 100 + 128,
                        (x * (i + 1) + y) % 256], -1)
        bases.append(Image.fromarray(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)))
    boxes = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(600, 1601, size=2))
        left, top = int(rng.integers(0, 1601 - w)), int(rng.integers(0, 1601 - h))
        boxes.append((i % 8, (left, top, left + w, top + h)))

    def one(job):
        b, box = job
        buf = io.BytesIO()
        bases[b].crop(box).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # Pillow releases the GIL while encoding
        return list(pool.map(one, boxes))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- device utilisation -------------------------------------------------------------------
class GpuUtil:
    """Mean GPU utilisation (nvidia-smi, every 100 ms) while the ``with`` block runs; None off CUDA."""

    def __init__(self, device: str):
        self.device = device
        self.samples: list[int] = []
        self.proc = None

    def __enter__(self):
        if not self.device.startswith("cuda") or shutil.which("nvidia-smi") is None:
            return self
        import torch

        idx = torch.cuda.current_device() if ":" not in self.device else int(self.device.split(":")[1])
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(idx), "-lms", "100"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def read():
            for line in self.proc.stdout:
                if line.strip().isdigit():
                    self.samples.append(int(line))

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.reader.join(timeout=2)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def timed(fn, device: str, sim_seconds: float | None = None) -> tuple[float, float | None]:
    """(wall seconds, device utilisation %) of ``fn()``."""
    sync(device)
    with GpuUtil(device) as u:
        t = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t
    util = u.mean if sim_seconds is None else 100.0 * sim_seconds / dt
    return dt, util


# -- VAE ----------------------------------------------------------------------------------
def bench_vae(args, tmp: Path, images: list[bytes]) -> list[dict]:
    import torch
    from diffusers import AutoencoderKL

    from mmprep import Context, Pipeline
    from mmprep_encoders.vae import VaeEncoder, load_image_rgb, resize_center_crop

    sim = args.device == "sim"
    dev = "cpu" if sim else args.device
    devtype = "cuda" if dev.startswith("cuda") else "cpu"
    d = tmp / "sdxl-vae"
    if not d.exists():
        if sim:  # the stand-in needs the config only
            d.mkdir()
            _write_config(d)
        else:
            torch.manual_seed(0)
            AutoencoderKL(**SDXL_VAE).save_pretrained(d)
    from mmprep_benchsim import SimVaeEncoder, vae_seconds

    n = len(images)
    df = pl.DataFrame({"key": [f"k{i:06d}" for i in range(n)], "image_bytes": images},
                      schema={"key": pl.String, "image_bytes": pl.Binary})
    parquet = tmp / "images.parquet"
    df.write_parquet(parquet, compression="uncompressed")
    threads = args.threads or None
    rows = []
    for r in args.res:
        opts = dict(model=str(d), resolutions=[r], batch_size=args.batch, dtype=args.dtype, device=dev)
        if sim:
            opts.update(sim_rate_512=args.sim_vae_rate, prefetch=True, preprocess_threads=args.threads or (os.cpu_count() or 1))
        elif threads:
            opts["preprocess_threads"] = threads
        Enc = SimVaeEncoder if sim else VaeEncoder
        device_s = vae_seconds(n, r, args.sim_vae_rate) if sim else None
        # (a) the encoder on an in-memory frame
        enc = Enc(Enc.Options(**opts), Context())
        t = time.perf_counter()
        enc.setup(dev)
        load_s = time.perf_counter() - t
        enc.encode(df.head(min(2 * args.batch, n)))  # warm-up (cudnn autotune, allocator)
        ta, ua = timed(lambda: enc.encode(df), dev, device_s)
        nthreads = enc.preprocess_threads()
        # (d) the host side alone: decode + resize + crop with the encoder's threads
        with ThreadPoolExecutor(nthreads) as pool:
            t = time.perf_counter()
            list(pool.map(lambda b: resize_center_crop(load_image_rgb(b, r, True), r), images))
            td = time.perf_counter() - t
        del enc
        # (a2) mmprep run end to end
        out = tmp / f"run-{r}"
        doc = {"datasets": [{"name": "bench", "source": {"type": "parquet", "path": str(parquet)}}],
               "encode": [{"type": Enc.name, **{k: v for k, v in opts.items() if k != "device"}}],
               "write": [{"type": args.writer, "path": "out", "exclude": ["image_bytes"]}],  # key + latents, as micro_diffusion stage 2
               "run": {"samples_per_unit": args.unit, "workers": 1, "device": dev, "seed": 0}}
        res = None

        def run_pipeline():
            nonlocal res
            res = Pipeline.from_dict(doc, base_dir=tmp).run(out=str(out), quiet=True, overwrite=True)

        ta2, ua2 = timed(run_pipeline, dev, device_s)
        assert res.ok and res.manifest["totals"]["written"] == n, res.manifest["totals"]
        shutil.rmtree(out)
        # (b) micro_diffusion-style loop
        model = None if sim else AutoencoderKL.from_pretrained(d).eval().to(dev)

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                a = resize_center_crop(load_image_rgb(images[i], None, draft=False), r)
                return torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1

        def loop():
            dl = torch.utils.data.DataLoader(DS(), batch_size=32, num_workers=args.loader_workers,
                                             pin_memory=devtype == "cuda")
            with torch.no_grad():
                for x in dl:
                    if sim:  # the stand-in's device time and output, as mmprep's sim encoders
                        time.sleep(vae_seconds(x.shape[0], r, args.sim_vae_rate))
                        torch.zeros((x.shape[0], 4, r // 8, r // 8))
                        continue
                    with torch.autocast(devtype, dtype=torch_dtype(args.dtype), enabled=args.dtype != "float32"):
                        lat = model.encode(x.to(dev)).latent_dist.sample() * model.config.scaling_factor
                    lat.cpu()

        tb, ub = timed(loop, dev, device_s)
        # (c) model only, on pre-made device tensors
        if sim:
            tc, uc = device_s, 100.0
        else:
            x = torch.randn(min(args.batch, n), 3, r, r, device=dev).contiguous(memory_format=torch.channels_last)
            model.to(memory_format=torch.channels_last)
            n_batches = max(1, n // x.shape[0])

            def model_only():
                with torch.inference_mode(), torch.autocast(devtype, dtype=torch_dtype(args.dtype), enabled=args.dtype != "float32"):
                    for _ in range(n_batches):
                        model.encode(x).latent_dist.mean

            with torch.inference_mode(), torch.autocast(devtype, dtype=torch_dtype(args.dtype), enabled=args.dtype != "float32"):
                model.encode(x)
            tc, uc = timed(model_only, dev)
            tc *= n / (n_batches * x.shape[0])
            del model
        rows.append({"workload": f"VAE SDXL {r}²", "n": n, "threads": nthreads, "load": load_s, "a": n / ta, "a2": n / ta2, "b": n / tb,
                     "c": n / tc, "d": n / td, "ua": ua, "ua2": ua2, "ub": ub, "uc": uc})
        print(_vae_row(rows[-1]), flush=True)
    return rows


def _write_config(c: Path) -> None:
    import json

    cfg = {"_class_name": "AutoencoderKL", **{k: list(v) if isinstance(v, tuple) else v for k, v in SDXL_VAE.items()}}
    (c / "config.json").write_text(json.dumps(cfg))


def _pct(u):
    return "" if u is None else f"{u:.0f}%"


VAE_HEADER = ("| workload | n | threads | model load s | (a) encoder /s | (a2) mmprep run /s | (b) micro_diffusion loop /s | (c) model only /s "
              "| (d) host decode+resize /s | a/b | a/c | a2/c | a2/min(c,d) | device busy a / a2 / b / c |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _vae_row(x: dict) -> str:
    return (f"| {x['workload']} | {x['n']} | {x['threads']} | {x['load']:.2f} | {x['a']:.1f} | {x['a2']:.1f} | {x['b']:.1f} | {x['c']:.1f} | {x['d']:.1f} "
            f"| {x['a'] / x['b']:.2f} | {x['a'] / x['c']:.2f} | {x['a2'] / x['c']:.2f} | {x['a2'] / min(x['c'], x['d']):.2f} "
            f"| {_pct(x['ua'])} / {_pct(x['ua2'])} / {_pct(x['ub'])} / {_pct(x['uc'])} |")


# -- text ---------------------------------------------------------------------------------
def make_tokenizer_dir(d: Path, vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` entries (pad, </s>, unk), saved in ``d``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a photo of the cat dog car on in with red blue green small large near sea house".split()
    vocab = {w: i for i, w in enumerate(words)}
    for i in range(vocab_size - len(words) - 3):
        vocab[f"<t{i}>"] = len(vocab)
    vocab["<pad>"], vocab["</s>"], vocab["<unk>"] = len(vocab), len(vocab) + 1, len(vocab) + 2
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)


def bench_text(args, tmp: Path) -> list[dict]:
    import torch
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from mmprep import Context
    from mmprep_benchsim import SimClipTextEncoder, SimT5TextEncoder, text_seconds
    from mmprep_encoders.text import ClipTextEncoder, T5TextEncoder

    sim = args.device == "sim"
    dev = "cpu" if sim else args.device
    devtype = "cuda" if dev.startswith("cuda") else "cpu"
    rng = np.random.default_rng(0)
    words = "a photo of the cat dog car on in with red blue green small large near sea house".split()
    caps = [" ".join(rng.choice(words, size=int(rng.integers(5, 90)))) for _ in range(args.text_count)]  # some truncate
    df = pl.DataFrame({"key": [f"c{i}" for i in range(len(caps))], "caption": caps})
    rows = []
    specs = [
        ("CLIP-L text", SimClipTextEncoder if sim else ClipTextEncoder, CLIPTextModel,
         CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77), 77, {}),
        ("T5-base-sized", SimT5TextEncoder if sim else T5TextEncoder, T5EncoderModel,
         T5Config(vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12), 128,
         {"store_pad_tokens": True}),
    ]
    for label, Enc, Model, cfg, L, extra in specs:
        d = tmp / label.replace(" ", "_")
        if not d.exists():
            d.mkdir()
            if sim:
                cfg.save_pretrained(d)
            else:
                torch.manual_seed(0)
                Model(cfg).save_pretrained(d)
            make_tokenizer_dir(d, cfg.vocab_size)
        opts = dict(model=str(d), max_length=L, batch_size=args.text_batch, dtype=args.dtype, device=dev, **extra)
        if sim:
            opts.update(sim_tflops=args.sim_tflops, prefetch=True)
        enc = Enc(Enc.Options(**opts), Context())
        enc.setup(dev)
        enc.encode(df.head(2))
        device_s = text_seconds(cfg.to_dict(), len(caps), L, args.sim_tflops) if sim else None
        ta, ua = timed(lambda: enc.encode(df), dev, device_s)
        tok = AutoTokenizer.from_pretrained(d)
        model = None if sim else Model.from_pretrained(d).eval().to(dev)

        def loop():
            with torch.no_grad(), torch.autocast(devtype, dtype=torch_dtype(args.dtype), enabled=args.dtype != "float32"):
                for i in range(0, len(caps), args.text_batch):
                    ids = tok(caps[i : i + args.text_batch], padding="max_length", max_length=L, truncation=True,
                              return_tensors="pt")
                    if sim:  # the stand-in's device time and output, as mmprep's sim encoders
                        time.sleep(text_seconds(cfg.to_dict(), ids["input_ids"].shape[0], L, args.sim_tflops))
                        torch.zeros((ids["input_ids"].shape[0], L, cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.d_model)).half()
                        continue
                    ids = ids.to(dev)
                    model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state.half().cpu()

        tb, ub = timed(loop, dev, device_s)
        c = len(caps) / device_s if sim else None
        rows.append({"workload": label, "n": len(caps), "a": len(caps) / ta, "b": len(caps) / tb, "c": c, "ua": ua, "ub": ub})
        print(_text_row(rows[-1]), flush=True)
        del enc, model
    return rows


TEXT_HEADER = ("| workload | n | (a) mmprep captions/s | (b) plain tokenise+forward loop /s | (c) device only /s | a/b | a/c "
               "| device busy a / b |\n|---|---|---|---|---|---|---|---|")


def _text_row(x: dict) -> str:
    c = "" if x["c"] is None else f"{x['c']:.0f}"
    ac = "" if x["c"] is None else f"{x['a'] / x['c']:.2f}"
    return (f"| {x['workload']} | {x['n']} | {x['a']:.1f} | {x['b']:.1f} | {c} | {x['a'] / x['b']:.2f} | {ac} "
            f"| {_pct(x['ua'])} / {_pct(x['ub'])} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu | sim")
    ap.add_argument("--count", type=int, default=5000, help="JPEG inputs for the VAE benchmark")
    ap.add_argument("--res", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--unit", type=int, default=1000, help="samples per unit of the (a2) mmprep run")
    ap.add_argument("--threads", type=int, default=0, help="mmprep decode threads (0: the encoder's default)")
    ap.add_argument("--writer", default="mds", choices=["mds", "parquet"], help="writer of the (a2) mmprep run")
    ap.add_argument("--loader-workers", type=int, default=8, help="DataLoader workers of the (b) loop")
    ap.add_argument("--text-count", type=int, default=4096)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="compute dtype of every path (bf16 is emulated and very slow on AVX2-only CPUs)")
    ap.add_argument("--sim-vae-rate", type=float, default=715.0, help="sim: device images/s at 512² (issue 7's H100 ceiling)")
    ap.add_argument("--sim-tflops", type=float, default=400.0, help="sim: device dense TFLOP/s for the text models")
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))  # mmprep_benchsim
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="mmprep-bench-enc-"))
    try:
        if args.device == "sim":
            _install_sim_plugin(tmp)
        dev = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
               else f"{args.device} on CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
        print(f"device: {dev}; command: python {' '.join(sys.argv)}", flush=True)
        if not args.skip_vae:
            t = time.perf_counter()
            images = make_jpegs(args.count)
            print(f"{len(images)} JPEGs, {sum(map(len, images)) / len(images) / 1e3:.0f} KB mean, made in {time.perf_counter() - t:.1f} s",
                  flush=True)
            print(VAE_HEADER, flush=True)
            bench_vae(args, tmp, images)
        if not args.skip_text:
            print(TEXT_HEADER, flush=True)
            bench_text(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install_sim_plugin(tmp: Path) -> None:
    """Make bench/mmprep_benchsim.py the entry point ``benchsim`` (a dist-info on sys.path), so a
    pipeline can name its encoders like any installed plugin's."""
    from mmprep.registry import load

    site = tmp / "site"
    di = site / "mmprep_benchsim-0.dist-info"
    di.mkdir(parents=True)
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: mmprep-benchsim\nVersion: 0\n")
    (di / "entry_points.txt").write_text("[mmprep]\nbenchsim = mmprep_benchsim\n")
    sys.path.insert(0, str(site))
    load(refresh=True)


if __name__ == "__main__":
    main()
