"""End to end through the engine: webdataset tars in, NeMo precache / MDS latents out."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import yaml

from mmprep import ConfigError, Pipeline, ResumeError

from .conftest import CORPUS, jpeg


def write_tars(root, n_tars=2, per=5):
    root.mkdir(parents=True, exist_ok=True)
    keys = []
    for t in range(n_tars):
        with tarfile.open(root / f"{t:05d}.tar", "w") as tf:
            for i in range(per):
                k = f"s{t}{i:03d}"
                keys.append(k)
                w, h = (64 + 8 * i, 64) if i % 2 else (64, 72)
                for ext, data in (("jpg", jpeg(w, h, t * 10 + i)), ("txt", CORPUS[i].encode())):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return keys


def check_counts(manifest):
    for name, d in manifest["datasets"].items():
        assert d["planned"] == d["written"] + sum(d.get("rejected", {}).values()), (name, d)


def nemo_doc(models, inp, out, **extra):
    return {
        "batch_size_per_GPU": 3,
        "dataloader_num_workers": 0,
        "save_original_in_tar": False,
        "pickle_encodings": True,
        "input_dir": str(inp),
        "output_dir": str(out),
        "tar_chunk_size": 4,
        "encodings": [
            {"modality": "image", "extension": "jpg", "key": "autoencoderkl_image", "precision": 32,
             "encoder_config": {"cls": "nemo.collections.multimodal.models.text_to_image.stable_diffusion.ldm.autoencoder.AutoencoderKL",
                                "from_pretrained": str(models["vae"]), "resolution": 64}},
            {"modality": "text", "extension": "txt", "key": "t5_text", "precision": 32, "store_pad_tokens": False,
             "encoder_config": {"cls": "nemo.collections.multimodal.modules.imagen.encoder.t5encoder.T5Encoder",
                                "encoder_path": str(models["t5"]), "max_seq_len": 16}},
            {"modality": "text", "extension": "txt", "key": "clip_text", "precision": 16,
             "encoder_config": {"cls": "nemo.collections.multimodal.modules.stable_diffusion.encoders.modules.FrozenCLIPEmbedder",
                                "version": str(models["clip"]), "max_length": 77}},
        ],
        **extra,
    }


def test_nemo_precache_yaml_end_to_end(models, tmp_path):
    import webdataset as wds

    keys = write_tars(tmp_path / "in")
    cfg = tmp_path / "precache.yaml"
    cfg.write_text(yaml.safe_dump(nemo_doc(models, tmp_path / "in", tmp_path / "out")))
    res = Pipeline.from_yaml(cfg).run(out=str(tmp_path / "out"), quiet=True)
    check_counts(res.manifest)
    enc = {e["type"]: e for e in res.manifest["encoders"]}
    assert enc["vae"]["identity"]["mode"] == "params" and enc["t5"]["identity"]["store_pad_tokens"] is False
    tars = sorted((tmp_path / "out").glob("t0_r0_*.tar"))
    assert len(tars) == 3  # 10 samples, 4 per tar
    with open(tmp_path / "out" / "wdinfo.pkl", "rb") as fh:
        info = pickle.load(fh)
    assert info["chunk_size"] == 4
    samples = []
    for t in tars:
        ds = wds.WebDataset(str(t), shardshuffle=False)
        samples += list(ds)
    assert sorted(s["__key__"] for s in samples) == sorted(keys)
    d = pickle.loads(samples[0]["pickle"])
    assert d["autoencoderkl_image"].shape == (8, 32, 32) and d["autoencoderkl_image"].dtype == np.float32
    assert d["t5_text"].ndim == 2 and d["t5_text"].shape[1] == 32 and d["t5_text"].shape[0] <= 16
    assert d["clip_text"].shape == (77, 32)


def test_nemo_unknown_class_is_a_clear_error(models, tmp_path):
    doc = nemo_doc(models, tmp_path, tmp_path / "o")
    doc["encodings"][1]["encoder_config"]["cls"] = "nemo.collections.something.FancyEncoder"
    with pytest.raises(ConfigError, match="FancyEncoder.*cannot be mapped"):
        Pipeline.from_dict(doc, base_dir=tmp_path)


def test_mds_latents_preset_end_to_end(models, tmp_path):
    from streaming import StreamingDataset

    keys = write_tars(tmp_path / "in", n_tars=2, per=3)
    doc = {
        "datasets": [{"name": "w", "source": {"type": "webdataset", "path": str(tmp_path / "in" / "*.tar")}}],
        "encode": [
            {"type": "vae", "model": str(models["vae"]), "resolutions": [32, 64], "outputs": ["latents_256", "latents_512"],
             "batch_size": 2, "mode": "sample"},
            {"type": "clip-text", "model": str(models["clip"]), "batch_size": 4},
        ],
        "write": [{"type": "mds", "path": "mds", "preset": "latents"}],
        "run": {"seed": 3},
    }
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    check_counts(res.manifest)
    from mmprep_mds.index import release_shared_memory

    ds = StreamingDataset(local=str(tmp_path / "out" / "mds"), remote=None, shuffle=False, batch_size=1)
    assert len(ds) == len(keys)
    s = ds[0]
    release_shared_memory(ds)
    assert len(s["latents_512"]) == 4 * 32 * 32 * 2 and len(s["latents_256"]) == 4 * 16 * 16 * 2
    assert len(s["caption_latents"]) == 77 * 32 * 2
    lat = np.frombuffer(s["latents_512"], dtype="<f2")
    assert np.isfinite(lat).all() and lat.std() > 0


def test_resume_with_changed_weights_is_refused(models, tmp_path):
    import shutil

    write_tars(tmp_path / "in", n_tars=1, per=2)
    vae = tmp_path / "vae"
    shutil.copytree(models["vae"], vae)
    doc = {
        "datasets": [{"name": "w", "source": {"type": "webdataset", "path": str(tmp_path / "in" / "*.tar")}}],
        "encode": [{"type": "vae", "model": str(vae), "resolutions": [32], "mode": "mean"}],
        "write": [{"type": "parquet", "path": "pq"}],
    }
    Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    f = next(vae.glob("*.safetensors"))
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(ResumeError, match=r"encode\[0\] \(vae\): the encoder's identity changed"):
        Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    from mmprep.engine import verify

    assert any("identity differs" in p for p in verify(tmp_path / "out"))


def _latents_doc(models, inp):
    return {
        "datasets": [{"name": "w", "source": {"type": "webdataset", "path": str(inp / "*.tar")}}],
        "encode": [
            {"type": "vae", "model": str(models["vae"]), "resolutions": [32], "outputs": ["latents_256"], "mode": "sample", "dtype": "float32", "batch_size": 3},
            {"type": "clip-text", "model": str(models["clip"]), "columns": ["caption"], "outputs": ["caption_latents"], "storage_dtype": "float16"},
        ],
        "write": [{"type": "webdataset", "path": "wds", "samples_per_shard": 4}],
        "run": {"workers": 1, "device": "cpu", "seed": 3},
    }


def _read_shards(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.tar"))}


def test_sample_mode_identical_across_worker_counts(models, tmp_path):
    """Per-key seeded noise: the latents do not depend on how units spread over workers."""
    write_tars(tmp_path / "in", n_tars=3, per=4)
    doc = _latents_doc(models, tmp_path / "in")
    r1 = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "w1"), quiet=True)
    doc["run"]["workers"] = 2
    r2 = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "w2"), quiet=True)
    check_counts(r1.manifest)
    a, b = _read_shards(tmp_path / "w1" / "wds"), _read_shards(tmp_path / "w2" / "wds")
    assert list(a) == list(b) and len(a) == 3
    import webdataset as wds

    for name in a:
        xa = list(wds.WebDataset(str(tmp_path / "w1" / "wds" / name), shardshuffle=False))
        xb = list(wds.WebDataset(str(tmp_path / "w2" / "wds" / name), shardshuffle=False))
        assert [s["__key__"] for s in xa] == [s["__key__"] for s in xb]
        for sa, sb in zip(xa, xb):
            la = np.load(io.BytesIO(sa["latents_256.npy"])) if "latents_256.npy" in sa else np.frombuffer(sa["latents_256"], np.float32)
            lb = np.load(io.BytesIO(sb["latents_256.npy"])) if "latents_256.npy" in sb else np.frombuffer(sb["latents_256"], np.float32)
            np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
    assert r1.manifest["encoders"][1]["stats"].get("encoded", 0) >= 12


def test_kill9_and_resume_equals_uninterrupted(models, tmp_path, mmprep_env):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    write_tars(tmp_path / "in", n_tars=6, per=3)
    doc = _latents_doc(models, tmp_path / "in")
    doc["encode"][0]["mode"] = "mean"  # bit-stable on CPU whatever the batch composition
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    clean = Pipeline.from_yaml(cfg).run(out=str(tmp_path / "clean"), quiet=True)
    check_counts(clean.manifest)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out), "-q"], env=mmprep_env, start_new_session=True)
    units = out / "_mmprep" / "units"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if units.exists() and len([p for p in units.glob("*.json") if "." not in p.stem]) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "wds" / "00000.tar").exists() or (out / "_mmprep" / "manifest.json").exists()
    r = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out), "-q"], env=mmprep_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _read_shards(out / "wds") == _read_shards(tmp_path / "clean" / "wds")
    check_counts(json.loads((out / "_mmprep" / "manifest.json").read_text()))


def test_models_load_while_the_first_unit_is_read(models, tmp_path, monkeypatch):
    """With units in the driver, encoder setup runs while the read-ahead thread reads unit 0
    (the read waits for setup to begin: it only can if both run at once); a setup that fails
    still fails every unit with its error."""
    import threading

    import polars as pl

    from mmprep.engine import UnitRunner

    pl.DataFrame({"key": [f"k{i}" for i in range(6)], "image_bytes": [jpeg(64, 64, i) for i in range(6)]}).write_parquet(tmp_path / "in.parquet")
    setting_up = threading.Event()
    read, setup = UnitRunner.read, UnitRunner._setup_encoders

    def slow_first_read(self, unit):
        if unit["index"] == 0:
            assert setting_up.wait(10), "the models were not loading while unit 0 was read"
        return read(self, unit)

    def logged_setup(self):
        setting_up.set()
        return setup(self)

    monkeypatch.setattr(UnitRunner, "read", slow_first_read)
    monkeypatch.setattr(UnitRunner, "_setup_encoders", logged_setup)
    doc = {"datasets": [{"name": "d", "source": {"type": "parquet", "path": "in.parquet"}, "key": {"column": "key"}}],
           "encode": [{"type": "vae", "model": str(models["vae"]), "resolutions": [32], "mode": "mean"}],
           "write": [{"type": "parquet", "path": "pq"}], "run": {"samples_per_unit": 3, "device": "cpu"}}
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "ok"), workers=1, quiet=True)
    assert res.ok and res.manifest["totals"]["written"] == 6

    setting_up.set()
    doc["encode"][0]["device"] = "cuda:7"  # no such device here (or on any GPU machine of this project)
    bad = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "bad"), workers=1, quiet=True)
    assert len(bad.failed) == 2 and all("cuda:7" in m for m in bad.failed.values())
