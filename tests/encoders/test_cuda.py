"""CUDA paths of the encoders: pinned memory, non-blocking copies, two batches in flight,
prefetch, bf16 autocast, channels_last, torch.compile, one worker per GPU.

Skipped without a GPU (CI has none); bench/gpu/check.sh runs them on a machine that has one.
Every test compares the CUDA result with the CPU float32 result of the same encoder.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from mmprep import REJECT_REASON, Context  # noqa: E402
from mmprep_encoders.text import ClipTextEncoder, LlmMeanEncoder, T5TextEncoder  # noqa: E402
from mmprep_encoders.vae import VaeEncoder  # noqa: E402

from .conftest import CORPUS, jpeg  # noqa: E402


@pytest.fixture(autouse=True)
def no_tf32():
    """float32 means float32 here: TF32 convolutions/matmuls (cuDNN's default) would differ from the CPU by ~1e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def enc(klass, device, **kw):
    e = klass(klass.Options(**{"storage_dtype": "float32", **kw}), Context(seed=3))
    e.setup(device)
    return e


def latents(df, col, shape):
    return np.stack([np.frombuffer(b, "<f4").reshape(shape) for b in df[col]])


@pytest.fixture(scope="module")
def images():
    sizes = [(64, 64), (80, 64), (64, 96), (100, 70), (72, 72), (128, 64), (64, 66), (90, 90)] * 3
    return pl.DataFrame({"key": [f"k{i:03d}" for i in range(len(sizes))],
                         "image_bytes": [jpeg(w, h, i) for i, (w, h) in enumerate(sizes)]},
                        schema={"key": pl.String, "image_bytes": pl.Binary})


@pytest.mark.parametrize("mode", ["mean", "sample", "params"])
def test_vae_on_cuda_float32_equals_cpu(models, images, mode):
    cpu = enc(VaeEncoder, "cpu", model=str(models["vae"]), resolutions=[32, 64], mode=mode, dtype="float32").encode(images)
    gpu_enc = enc(VaeEncoder, "cuda", model=str(models["vae"]), resolutions=[32, 64], mode=mode, dtype="float32", batch_size=5)
    assert gpu_enc.on_cuda and gpu_enc.preprocess_threads() >= 1
    assert torch.backends.cudnn.benchmark  # fixed shapes: cuDNN autotunes the convolutions
    gpu = gpu_enc.encode(images)
    for col, shape in gpu_enc.output_columns().items():
        np.testing.assert_allclose(latents(gpu, col, shape["shape"]), latents(cpu, col, shape["shape"]), rtol=1e-3, atol=1e-3)


def test_vae_sample_mode_on_cuda_independent_of_batch_size_and_prefetch(models, images):
    # conv kernels are not bit-identical across batch shapes; the noise is: compare at 1e-5
    outs = [enc(VaeEncoder, "cuda", model=str(models["vae"]), resolutions=[64], batch_size=b, prefetch=p, dtype="float32")
            .encode(images) for b, p in ((1, False), (3, True), (32, True))]
    for o in outs[1:]:
        np.testing.assert_allclose(latents(o, "latents_64", [4, 32, 32]), latents(outs[0], "latents_64", [4, 32, 32]), atol=1e-5, rtol=0)


def test_vae_bf16_autocast_close_to_float32(models, images):
    e = enc(VaeEncoder, "cuda", model=str(models["vae"]), resolutions=[64], mode="mean")
    assert e.compute_dtype == "bfloat16"  # auto on CUDA
    bf16 = latents(e.encode(images), "latents_64", e.output_columns()["latents_64"]["shape"])
    f32 = latents(enc(VaeEncoder, "cuda", model=str(models["vae"]), resolutions=[64], mode="mean", dtype="float32").encode(images),
                  "latents_64", e.output_columns()["latents_64"]["shape"])
    assert np.abs(bf16 - f32).max() < 0.05 * max(1.0, np.abs(f32).max())


def test_vae_torch_compile_equals_eager(models, images):
    kw = dict(model=str(models["vae"]), resolutions=[64], mode="mean", dtype="float32", batch_size=8)
    eager = enc(VaeEncoder, "cuda", **kw).encode(images)
    compiled = enc(VaeEncoder, "cuda", compile=True, **kw).encode(images)
    a, b = (np.stack([np.frombuffer(x, "<f4") for x in df["latents_64"]]) for df in (eager, compiled))
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind,klass,kw", [
    ("clip", ClipTextEncoder, {"pooled": True}),
    ("t5", T5TextEncoder, {"max_length": 16}),  # Ragged: pad rows stripped after one copy per batch
    ("t5", T5TextEncoder, {"max_length": 16, "store_pad_tokens": True}),
    ("lm", LlmMeanEncoder, {"max_length": 24}),
])
def test_text_on_cuda_float32_equals_cpu(models, kind, klass, kw):
    texts = pl.DataFrame({"key": [f"t{i}" for i in range(len(CORPUS))], "caption": CORPUS})
    cpu = enc(klass, "cpu", model=str(models[kind]), dtype="float32", batch_size=4, **kw).encode(texts)
    gpu = enc(klass, "cuda", model=str(models[kind]), dtype="float32", batch_size=4, **kw).encode(texts)
    for col in cpu.columns:
        if cpu.schema[col] == pl.Binary:
            for x, y in zip(cpu[col], gpu[col]):
                np.testing.assert_allclose(np.frombuffer(y, "<f4"), np.frombuffer(x, "<f4"), rtol=1e-3, atol=1e-4)


def test_non_finite_samples_on_cuda_are_rejected_one_by_one(models):
    from mmprep_encoders.base import EncoderOptions, TorchEncoder

    class NanOnCuda(TorchEncoder):
        """x < 0 gives NaN, computed on the GPU."""

        name = "nan-on-cuda"
        Options = EncoderOptions

        def output_columns(self):
            return {"y": {"dtype": "float32", "shape": [4]}}

        def load(self, device):
            self.model = object()

        def prepare(self, rows):
            return {"x": self.pin(torch.tensor(rows["x"].to_numpy(), dtype=torch.float32))}

        def forward(self, batch):
            x = self.to_device(batch["x"])
            return {"y": torch.sqrt(x).unsqueeze(1) * torch.ones(1, 4, device=x.device)}

    df = pl.DataFrame({"key": [f"k{i}" for i in range(10)], "x": [1.0, -1.0, 4.0, 9.0, -2.0, 16.0, 0.0, 25.0, -3.0, 36.0]})
    e = NanOnCuda(EncoderOptions(storage_dtype="float32", batch_size=3), Context())
    e.setup("cuda")
    out = e.encode(df)
    assert out[REJECT_REASON].to_list() == [None, "non_finite", None, None, "non_finite", None, None, None, "non_finite", None]
    kept = [np.frombuffer(b, "<f4")[0] for b, r in zip(out["y"], out[REJECT_REASON]) if r is None]
    assert kept == [1.0, 2.0, 3.0, 4.0, 0.0, 5.0, 6.0]


def test_two_workers_share_one_gpu_and_equal_one(models, images, tmp_path, run_pipeline):
    images.write_parquet(tmp_path / "in.parquet")
    outs = {}
    for workers in (1, 2):
        doc = {"datasets": [{"name": "d", "source": {"type": "parquet", "path": "in.parquet"}, "key": {"column": "key"}}],
               "encode": [{"type": "vae", "model": str(models["vae"]), "resolutions": [64], "storage_dtype": "float32"}],
               "write": [{"type": "parquet", "path": "pq"}],
               "run": {"samples_per_unit": 6, "device": "cuda", "workers": workers}}
        res = run_pipeline(doc, out=tmp_path / f"w{workers}", workers=workers)
        assert res.manifest["totals"]["written"] == images.height
        outs[workers] = pl.read_parquet(sorted((tmp_path / f"w{workers}" / "pq").glob("*.parquet"))).sort("key")
    np.testing.assert_allclose(latents(outs[1], "latents_64", [4, 32, 32]), latents(outs[2], "latents_64", [4, 32, 32]), atol=1e-4, rtol=0)
