"""Source ``webdataset``: grouping, brace/glob paths, require, truncation, pickle refusal."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mmprep import Context, Partition
from mmprep.errors import ConfigError
from mmprep_webdataset import WebDatasetSource

from .conftest import img2dataset_tars, jpeg, write_tar


def _src(tmp_path, **opts):
    return WebDatasetSource(WebDatasetSource.Options(**opts), Context(base_dir=tmp_path))


def test_partitions_brace_glob_and_rows(tmp_path):
    truth = img2dataset_tars(tmp_path / "shards", [3, 5, 2])
    s = _src(tmp_path, path="shards/{00000..00002}.tar")
    parts = s.partitions()
    assert [p.id for p in parts] == ["00000", "00001", "00002"]
    assert [p.id for p in _src(tmp_path, path="shards/*.tar").partitions()] == ["00000", "00001", "00002"]
    data = s.read_partition(parts[1])
    df = data.frame
    assert data.rejected == {}
    assert df["key"].to_list() == [f"00001{j:04d}" for j in range(5)]
    assert df["__key__"].to_list() == df["key"].to_list()
    assert df["__url__"].unique().to_list() == [str(tmp_path / "shards" / "00001.tar")]
    for row in df.iter_rows(named=True):
        t = truth[row["key"]]
        assert row["image_bytes"] == t["jpg"] and row["caption"] == t["txt"].decode()
        assert row["json"] == json.loads(t["json"])
    assert df.schema["image_bytes"] == pl.Binary and isinstance(df.schema["json"], pl.Struct)
    flat = _src(tmp_path, path="shards/00000.tar", json_mode="flatten").read_partition(parts[0]).frame
    assert {"short", "long", "json_key", "json_caption"} <= set(flat.columns)
    raw = _src(tmp_path, path="shards/00000.tar", json_mode="raw").read_partition(parts[0]).frame
    assert raw["json"].to_list()[0] == truth["000000000"]["json"]
    with pytest.raises(ConfigError, match="no tar matches"):
        _src(tmp_path, path="nothing/*.tar").partitions()


def test_require_drops_only_incomplete_samples(tmp_path):
    img2dataset_tars(tmp_path, [10], missing_every=3)
    s = _src(tmp_path, path="00000.tar", require=["jpg;png", "txt"])
    data = s.read_partition(s.partitions()[0])
    assert data.rejected == {"missing_member": 3}
    assert data.frame.height == 7
    assert data.frame["key"].to_list()[-1] == "000000009"  # samples after the gaps are kept
    assert "no txt member" in data.examples["missing_member"][0]["message"]


def test_truncated_tar_keeps_samples_before_damage(tmp_path):
    img2dataset_tars(tmp_path, [8])
    p = tmp_path / "00000.tar"
    data = p.read_bytes()
    s = _src(tmp_path, path="00000.tar")
    whole = s.read_partition(s.partitions()[0]).frame
    for cut in (len(data) * 2 // 3, 512 * 9, len(data) - 10240):  # mid-data, block boundary, end marker gone
        p.write_bytes(data[:cut])
        d = s.read_partition(Partition("00000", {"url": str(p)}))
        assert d.rejected == {"truncated_shard": 1}, cut
        assert 0 <= d.frame.height < 8
        assert d.frame["key"].to_list() == whole["key"].to_list()[: d.frame.height]
        if d.frame.height:
            assert d.frame["image_bytes"].to_list() == whole["image_bytes"].to_list()[: d.frame.height]
        assert "00000.tar" in d.examples["truncated_shard"][0]["message"]
    p.write_bytes(b"not a tar at all" * 100)
    d = s.read_partition(Partition("00000", {"url": str(p)}))
    assert d.rejected == {"truncated_shard": 1} and d.frame.height == 0


def test_pickle_members_refused_unless_allowed(tmp_path):
    import pickle

    write_tar(tmp_path / "p.tar", [("a", {"pickle": pickle.dumps({"x": 1}), "txt": b"t"}), ("b", {"txt": b"u"})])
    s = _src(tmp_path, path="p.tar")
    d = s.read_partition(s.partitions()[0])
    assert d.rejected == {"pickle_refused": 1} and d.frame["key"].to_list() == ["b"]
    assert "pickle" not in d.frame.columns
    d2 = _src(tmp_path, path="p.tar", allow_pickle=True).read_partition(s.partitions()[0])
    assert d2.frame.height == 2 and d2.frame["pickle"][0] == pickle.dumps({"x": 1})


def test_other_members_binary_and_keys_sanitised(tmp_path):
    write_tar(tmp_path / "x.tar", [("dir/k", {"png": jpeg(0), "seg.png": b"S", "npy": b"N"}), ("m.v2", {"txt": b"T"})])
    d = _src(tmp_path, path="x.tar").read_partition(Partition("x", {"url": str(tmp_path / "x.tar")}))
    # webdataset's rule: key = up to the first dot of the basename
    assert d.frame["__key__"].to_list() == ["dir/k", "m"] and d.frame["key"].to_list() == ["dir_k", "m"]
    assert d.frame["image_bytes"][0] == jpeg(0)
    assert d.frame["seg.png"][0] == b"S" and d.frame["npy"][0] == b"N"
    assert d.frame["v2.txt"][1] == b"T" and "caption" not in d.frame.columns


def test_fsspec_url(tmp_path):
    import fsspec

    img2dataset_tars(tmp_path, [4])
    fs = fsspec.filesystem("memory")
    fs.pipe("/wds/00000.tar", (tmp_path / "00000.tar").read_bytes())
    s = _src(tmp_path, path="memory://wds/{00000..00000}.tar")
    parts = s.partitions()
    assert len(parts) == 1
    assert s.read_partition(parts[0]).frame.height == 4
