from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from mmprep import Context, REJECT_REASON
from mmprep.hashing import hash_strings
from mmprep_encoders.vae import VaeEncoder

from .conftest import jpeg


def make(models, seed=0, **kw):
    opts = {"model": str(models["vae"]), "resolutions": [32, 64], "dtype": "float32", "storage_dtype": "float32", **kw}
    enc = VaeEncoder(VaeEncoder.Options(**opts), Context(seed=seed))
    enc.setup("cpu")
    return enc


def reference_pixels(data: bytes, r: int):
    """Independent preprocessing: PIL decode, shorter side to r (bicubic), centre crop, [-1, 1]."""
    import torch
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = min(w, h)
    nw, nh = round(w * r / s), round(h * r / s)
    im = im.resize((nw, nh), Image.BICUBIC)
    l, t = (nw - r) // 2, (nh - r) // 2
    a = np.asarray(im.crop((l, t, l + r, t + r)), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def direct_dist(models, data, r):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(models["vae"])).eval()
    with torch.no_grad():
        return vae.encode(reference_pixels(data, r)).latent_dist, vae.config.scaling_factor


def decode(df, col, shape, dtype=np.float32):
    return [np.frombuffer(b, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape) for b in df[col]]


def test_mean_mode_matches_direct_diffusers(models, image_frame):
    enc = make(models, mode="mean", batch_size=3)
    out = enc.encode(image_frame)
    cols = enc.output_columns()
    assert cols == {"latents_32": {"dtype": "float32", "shape": [4, 16, 16]},
                    "latents_64": {"dtype": "float32", "shape": [4, 32, 32]}}
    assert out.schema["latents_32"] == pl.Binary and REJECT_REASON not in out.columns
    for r in (32, 64):
        got = decode(out, f"latents_{r}", cols[f"latents_{r}"]["shape"])
        for i in (0, 3, 5):
            dist, sf = direct_dist(models, image_frame["image_bytes"][i], r)
            np.testing.assert_allclose(got[i], (dist.mean * sf)[0].numpy(), rtol=1e-4, atol=1e-4)


def test_params_mode_is_mean_and_logvar_unscaled(models, image_frame):
    enc = make(models, mode="params", resolutions=[64], outputs=["moments"])
    out = enc.encode(image_frame.head(2))
    assert enc.output_columns() == {"moments": {"dtype": "float32", "shape": [8, 32, 32]}}
    got = decode(out, "moments", [8, 32, 32])
    dist, _ = direct_dist(models, image_frame["image_bytes"][1], 64)
    np.testing.assert_allclose(got[1][:4], dist.mean[0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1][4:], dist.logvar[0].numpy(), rtol=1e-4, atol=1e-4)


def test_sample_mode_seeded_per_key_independent_of_batch_size(models, image_frame):
    import torch

    # conv kernels are not bit-identical across batch shapes; the noise is: compare at 1e-5
    outs = [make(models, mode="sample", batch_size=bs, seed=7).encode(image_frame) for bs in (1, 3, 8)]
    for col, shape in (("latents_32", [4, 16, 16]), ("latents_64", [4, 32, 32])):
        a, b, c = (np.stack(decode(o, col, shape)) for o in outs)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a, c, atol=1e-5, rtol=0)
    # a shuffled frame gives every key the same latents
    perm = image_frame.sample(fraction=1.0, shuffle=True, seed=1)
    shuffled = make(models, mode="sample", batch_size=4, seed=7).encode(perm)
    a = dict(zip(outs[0]["key"], decode(outs[0], "latents_64", [4, 32, 32])))
    for k, v in zip(shuffled["key"], decode(shuffled, "latents_64", [4, 32, 32])):
        np.testing.assert_allclose(v, a[k], atol=1e-5, rtol=0)
    # the value is mean + std * N(0,1) drawn from the key's generator, times the scaling factor
    key, data = image_frame["key"][2], image_frame["image_bytes"][2]
    dist, sf = direct_dist(models, data, 64)
    g = torch.Generator().manual_seed(int(hash_strings([key], seed=7 * 65537 + 64)[0]) & 0x7FFF_FFFF_FFFF_FFFF)
    noise = torch.randn((4, 32, 32), generator=g)
    want = ((dist.mean[0] + dist.std[0] * noise) * sf).numpy()
    got = decode(outs[0], "latents_64", [4, 32, 32])[2]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # another run seed gives other noise; the mean mode differs from sample
    other = make(models, mode="sample", seed=8).encode(image_frame.head(1))
    diff = np.abs(decode(other, "latents_64", [4, 32, 32])[0] - decode(outs[0], "latents_64", [4, 32, 32])[0])
    assert diff.mean() > 1e-3


def test_bf16_compute_fp16_storage_close_to_fp32(models, image_frame):
    ref = make(models, mode="mean", resolutions=[32]).encode(image_frame.head(3))
    enc = make(models, mode="mean", resolutions=[32], dtype="bfloat16", storage_dtype="float16")
    out = enc.encode(image_frame.head(3))
    assert enc.output_columns()["latents_32"]["dtype"] == "float16"
    a = np.stack(decode(out, "latents_32", [4, 16, 16], np.float16)).astype(np.float32)
    b = np.stack(decode(ref, "latents_32", [4, 16, 16]))
    assert len(out["latents_32"][0]) == 4 * 16 * 16 * 2
    assert np.abs(a - b).max() < 0.05 * (np.abs(b).max() + 1e-6) + 0.02


def test_small_and_broken_images(models):
    df = pl.DataFrame({
        "key": ["big", "small", "broken", "null"],
        "image_bytes": [jpeg(64, 80, 1), jpeg(40, 30, 2), b"not an image", None],
    }, schema={"key": pl.String, "image_bytes": pl.Binary})
    rej = make(models, mode="mean", small_images="reject").encode(df)
    assert rej[REJECT_REASON].to_list() == [None, "too_small_for_encoder", "undecodable_image", "undecodable_image"]
    assert rej["latents_64"][0] is not None and rej["latents_64"][1] is None
    up = make(models, mode="mean", small_images="upscale").encode(df)
    assert up[REJECT_REASON].to_list() == [None, None, "undecodable_image", "undecodable_image"]
    assert len(up["latents_64"][1]) == 4 * 32 * 32 * 4


def test_array_output(models, image_frame):
    enc = make(models, mode="mean", resolutions=[32], output="array", storage_dtype="float16")
    out = enc.encode(image_frame.head(2))
    assert out.schema["latents_32"] == pl.Array(pl.Float16, (4, 16, 16))
    byt = make(models, mode="mean", resolutions=[32], storage_dtype="float16").encode(image_frame.head(2))
    np.testing.assert_array_equal(out["latents_32"].to_numpy()[1], decode(byt, "latents_32", [4, 16, 16], np.float16)[1])


def test_identity_deterministic_and_tracks_weights(models, tmp_path):
    import shutil

    a = VaeEncoder(VaeEncoder.Options(model=str(models["vae"]), resolutions=[32]), Context())
    b = VaeEncoder(VaeEncoder.Options(model=str(models["vae"]), resolutions=[32]), Context())
    ia = a.identity()
    assert ia == b.identity()
    assert ia["weights"].startswith("sha256:") and ia["scaling_factor"] == pytest.approx(0.18215)
    assert ia["class"] == "diffusers.AutoencoderKL" and ia["mode"] == "sample" and ia["resolutions"] == [32]
    copy = tmp_path / "vae2"
    shutil.copytree(models["vae"], copy)
    f = next(copy.glob("*.safetensors"))
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    c = VaeEncoder(VaeEncoder.Options(model=str(copy), resolutions=[32]), Context())
    assert c.identity()["weights"] != ia["weights"]
    m = VaeEncoder(VaeEncoder.Options(model=str(models["vae"]), resolutions=[32], mode="mean"), Context())
    assert m.identity() != ia


def test_sequential_unloads_and_reloads(models, image_frame):
    enc = make(models, mode="mean", resolutions=[32], sequential=True)
    assert enc.model is None
    a = enc.encode(image_frame.head(2))
    assert enc.model is None
    b = enc.encode(image_frame.head(2))
    assert a["latents_32"].to_list() == b["latents_32"].to_list()


def test_prefetch_thread_same_result(models, image_frame):
    a = make(models, mode="sample", resolutions=[32], batch_size=2, prefetch=True, preprocess_threads=2).encode(image_frame)
    b = make(models, mode="sample", resolutions=[32], batch_size=5, prefetch=False).encode(image_frame)
    np.testing.assert_allclose(np.stack(decode(a, "latents_32", [4, 16, 16])),
                               np.stack(decode(b, "latents_32", [4, 16, 16])), atol=1e-5, rtol=0)


def test_cuda_requested_without_cuda_is_clear(models):
    enc = VaeEncoder(VaeEncoder.Options(model=str(models["vae"]), resolutions=[32], device="cuda:0"), Context())
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        enc.setup("cpu")
