"""The LaViDa-O data YAML dialect end to end, through the engine and the CLI."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from llava_helpers import read_jsonl, t2i_rows

from mmprep import ConfigError, Pipeline


def check_accounting(manifest):
    for name, d in manifest["datasets"].items():
        assert d["planned"] == d["written"] + sum(d["rejected"].values()), name


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    t = t2i_rows(60, seed=1, prefix="laion")
    t.drop("key", "dataset").write_parquet(d / "t2i.parquet")
    t.drop("key", "dataset", "fltLaionAesthScore").write_csv(d / "t2i.csv")
    und = pl.DataFrame({
        "image": [f"img/{i}.jpg" if i % 3 else f"/abs/{i}.jpg" for i in range(20)],
        "conversations": [json.dumps([{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": f"Thing {i}."}]) for i in range(20)],
    })
    und.write_ndjson(d / "und.jsonl")
    edit = [{"input_paths": ["a.png"] * (1 + i % 4), "output_paths": f"o{i}.png", "instruction": f"edit {i}"} for i in range(12)]
    (d / "edit.json").write_text(json.dumps(edit))
    return d, t


def write_yaml(tmp_path, doc) -> Path:
    p = tmp_path / "lavida.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_end_to_end_all_inputs(tmp_path, data, caplog):
    d, t = data
    doc = {
        "datasets": [
            {"name": "laion", "json_path": "data/t2i.parquet", "preprocess_fn": "preproces_text_to_image_generation_s3",
             "columns": ["s3_path", "caption", "fltLaionAesthScore", "intHeight", "intWidth"], "min_size": 512, "length_group": "t2i"},
            {"name": "laion-csv", "json_path": str(d / "t2i.csv"), "sampling_strategy": "first:10",
             "preprocess_fn": "preproces_text_to_image_generation_s3", "process_fn_kwargs": {"caption_key": "llava_next_caption", "unknown_kwarg": 1},
             "length_group": "t2i"},
            {"name": "und", "json_path": "data/und.jsonl", "preprocess_fn": "preproces_und_mammoth_si_10M", "image_root": "/root",
             "process_fn_kwargs": {"s3_prefix": "s3://pre"}, "sampling_strategy": "dup:2", "length_group": "und"},
            {"name": "edit", "json_path": "data/edit.json", "preprocess_fn": "process_gpt_edit", "max_enc_images": {"column": "input_paths", "value": 2},
             "sampling_strategy": "end:50%", "length_group": "edit"},
        ],
        "weights": {"t2i": 250, "edit": 200},
        "batch_sizes": {"und": 0.5},
    }
    path = write_yaml(tmp_path, doc)
    with caplog.at_level(logging.WARNING, logger="mmprep.llava"):
        pipe = Pipeline.from_yaml(path)
    assert any("implicit cutoff" in r.message for r in caplog.records)
    assert any("unknown_kwarg" in r.message for r in caplog.records)
    out = tmp_path / "out"
    res = pipe.run(out=str(out), quiet=True)
    m = res.manifest
    check_accounting(m)
    # parquet: implicit aes cutoff > 5 then min_size 512
    exp = t.filter((pl.col("fltLaionAesthScore") > 5) & (pl.col("intWidth") >= 512) & (pl.col("intHeight") >= 512))
    laion = read_jsonl(out / "laion.jsonl")
    assert len(laion) == exp.height > 0
    assert [p["image_gen"] for p in laion] == exp["s3_path"].to_list()
    assert all(p["gen_score"][0] > 5 for p in laion)
    assert "hpsv2" not in laion[0]
    # csv: no aes column (no cutoff), first:10, caption from llava_next_caption
    csv = read_jsonl(out / "laion-csv.jsonl")
    assert len(csv) == 10 and "gen_score" not in csv[0]
    assert csv[0]["conversations"][0]["value"].startswith("Generate an image with the caption: " + t["llava_next_caption"][0][:20])
    # jsonl: image_root joined onto relative paths (absolute kept), then s3_prefix (absolute now: kept); dup ids distinct
    und = read_jsonl(out / "und.jsonl")
    assert len(und) == 40
    assert len({p["id"] for p in und}) == 40
    assert und[0]["image"] == "/abs/0.jpg" and und[2]["image"] == "/root/img/1.jpg" and und[3]["image"] == "/root/img/1.jpg"
    # json: max_enc_images <= 2 keeps 6 of 12, end:50% keeps the last 3
    edit = read_jsonl(out / "edit.jsonl")
    kept = [i for i in range(12) if 1 + i % 4 <= 2]
    assert [p["image_gen"] for p in edit] == [f"o{i}.png" for i in kept[-math.ceil(len(kept) / 2):]]
    # the LaViDa-O data YAML written back
    y = yaml.safe_load((out / "data.yaml").read_text())
    assert y["weights"] == {"t2i": 250, "edit": 200} and y["batch_sizes"] == {"und": 0.5}
    assert [(e["name"], e["length_group"], e["sampling_strategy"]) for e in y["datasets"]] == [
        ("laion", "t2i", "all"), ("laion-csv", "t2i", "all"), ("und", "und", "all"), ("edit", "edit", "all")]
    assert all("preprocess_fn" not in e for e in y["datasets"])
    for e in y["datasets"]:
        assert Path(e["json_path"]).is_absolute() and Path(e["json_path"]).exists()
    assert sum(m["datasets"]["laion"]["filtered"].values()) == 60 - exp.height


def test_random_sampling_percent_and_seed(tmp_path, data):
    d, t = data
    doc = {"datasets": [{"name": "r", "json_path": "data/t2i.parquet", "preprocess_fn": "preproces_text_to_image_generation_s3",
                         "aes_cutoff": None, "sampling_strategy": "random:25%"}]}
    res = Pipeline.from_yaml(write_yaml(tmp_path, doc)).run(out=str(tmp_path / "o"), quiet=True)
    check_accounting(res.manifest)
    rows = read_jsonl(tmp_path / "o" / "r.jsonl")
    assert len(rows) == math.ceil(25 * 60 / 100)  # aes_cutoff: null disables the implicit cutoff
    paths = [p["image_gen"] for p in rows]
    assert paths == [p for p in t["s3_path"].to_list() if p in set(paths)]  # input order kept
    doc["datasets"][0]["sampling_strategy"] = "random:100"
    with pytest.raises(Exception, match="100"):
        Pipeline.from_yaml(write_yaml(tmp_path, doc)).run(out=str(tmp_path / "o2"), quiet=True)


def test_explicit_aes_cutoff_and_constant_id(tmp_path, data):
    d, t = data
    doc = {"datasets": [{"json_path": "data/t2i.parquet", "preprocess_fn": "preproces_text_to_image_generation_s3",
                         "aes_cutoff": 6.0, "process_fn_kwargs": {"id": "constant"}},
                        {"json_path": "data/t2i.parquet", "preprocess_fn": "llava-t2i", "aes_cutoff": 6.5}]}
    res = Pipeline.from_yaml(write_yaml(tmp_path, doc)).run(out=str(tmp_path / "o"), quiet=True)
    check_accounting(res.manifest)
    a, b = read_jsonl(tmp_path / "o" / "none.jsonl"), read_jsonl(tmp_path / "o" / "none_2.jsonl")
    assert len(a) == t.filter(pl.col("fltLaionAesthScore") > 6.0).height
    assert len(b) == t.filter(pl.col("fltLaionAesthScore") > 6.5).height
    assert {p["id"] for p in a} == {"000951660"}
    y = yaml.safe_load((tmp_path / "o" / "data.yaml").read_text())
    assert [e["name"] for e in y["datasets"]] == ["none", "none"]


@pytest.mark.parametrize(
    "entry, msg",
    [
        ({"json_path": "data/t2i.parquet", "preprocess_fn": "nope"}, r"datasets\[0\]\.preprocess_fn: unknown 'nope'.*preproces_text_to_image_generation_s3"),
        ({"json_path": "data/missing.parquet"}, r"datasets\[0\]\.json_path: file not found"),
        ({"json_path": "data/t2i.txt"}, r"datasets\[0\]\.json_path: unsupported file type"),
        ({"json_path": "data/und.jsonl", "min_size": 10}, r"datasets\[0\]\.min_size: requires the columns intHeight and intWidth"),
        ({"json_path": "data/t2i.parquet", "columns": ["nope"]}, r"datasets\[0\]\.columns: \['nope'\]"),
        ({"json_path": "data/t2i.parquet", "preprocess_fn": "preproces_text_to_image_generation_s3", "process_fn_kwargs": {"max_caption_chars": "x"}},
         r"datasets\[0\]\.process_fn_kwargs\.max_caption_chars"),
        ({"json_path": "data/t2i.parquet", "preprocess_fn": "process_uniworld"}, r"does not implement"),
        ({"json_path": "data/t2i.parquet", "preprocess_fn": "llava-t2i", "sampling_strategy": "first:abc"}, r"datasets\[0\]\.sampling"),
    ],
)
def test_config_errors(tmp_path, data, entry, msg):
    with pytest.raises(ConfigError, match=msg):
        Pipeline.from_yaml(write_yaml(tmp_path, {"datasets": [entry]}))


def test_native_documents_untouched():
    from mmprep_llava.dialect import translate

    assert translate({"datasets": [{"name": "x", "source": "parquet"}], "write": ["jsonl"]}, "p.yaml") is None
    assert translate(["not", "a", "mapping"], "p.yaml") is None


def test_cli_and_determinism_across_workers(tmp_path, data):
    doc = {"datasets": [{"name": "laion", "json_path": "data/t2i.parquet", "preprocess_fn": "preproces_text_to_image_generation_s3",
                         "aes_cutoff": None, "sampling_strategy": "dup:2",
                         "process_fn_kwargs": {"random_caption_keys": ["caption", "llava_next_caption"]}}],
           "run": {"samples_per_unit": 25}}
    path = write_yaml(tmp_path, doc)
    mmprep = str(Path(sys.executable).parent / "mmprep")
    outs = []
    for i, workers in enumerate((1, 2)):
        out = tmp_path / f"cli{i}"
        r = subprocess.run([mmprep, "run", str(path), "--out", str(out), "--workers", str(workers)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append((out / "laion.jsonl").read_text())
        check_accounting(json.loads((out / "_mmprep" / "manifest.json").read_text()))
    res = Pipeline.from_yaml(path).run(out=str(tmp_path / "api"), quiet=True)
    outs.append((tmp_path / "api" / "laion.jsonl").read_text())
    assert outs[0] == outs[1] == outs[2]
    assert len(outs[0].splitlines()) == 120
    r = subprocess.run([mmprep, "verify", str(tmp_path / "cli0")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [ {json_path: x.parquet\n")
    r = subprocess.run([mmprep, "run", str(bad), "--out", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid YAML" in r.stderr
    assert not (tmp_path / "nope").exists()
