import subprocess
import sys

import pytest
import yaml

from mmprep import ConfigError, Pipeline
from mmprep.cli import main


def write(tmp_path, doc, name="p.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return p


def test_many_errors_reported_together_with_paths(tmp_path):
    doc = {
        "datasets": [
            {"name": "a", "source": {"type": "parquet", "path": "x.parquet"}, "filters": [{"type": "range", "column": "w", "min": 5, "max": 1}]},
            {"name": "b", "source": {"type": "parquet", "path": "x.parquet", "colums": ["a"]}, "filters": [{"type": "min-size", "min_size": -1}], "sampling": "dup:0"},
        ],
        "format": [{"type": "template"}],
        "write": [{"type": "jsonl", "binary": "hex"}],
        "run": {"workers": 0},
    }
    with pytest.raises(ConfigError) as ei:
        Pipeline.from_dict(doc, base_dir=tmp_path, source="p.yaml")
    errs = ei.value.errors
    text = "\n".join(errs)
    assert "datasets[0].filters[0]: min (5.0) is greater than max (1.0)" in text
    assert "datasets[1].source.colums: unknown option" in text
    assert "datasets[1].filters[0].min_size: Input should be greater than or equal to 0" in text
    assert "datasets[1].sampling: sampling 'dup:0'" in text
    assert "format[0].column: required option missing" in text
    assert "write[0].binary: must be 'drop' or 'base64'" in text
    assert "run.workers: Input should be greater than or equal to 1" in text
    assert all(line.startswith("p.yaml: ") for line in str(ei.value).splitlines())


def test_unknown_component_lists_installed_and_hints_distribution(tmp_path):
    doc = {"datasets": [{"name": "a", "source": {"type": "parquet", "path": "x"}, "filters": [{"type": "nope"}]}], "write": [{"type": "mds-ish"}]}
    with pytest.raises(ConfigError) as ei:
        Pipeline.from_dict(doc, base_dir=tmp_path)
    text = str(ei.value)
    assert "datasets[0].filters[0].type: unknown filter 'nope'; installed filters: aesthetic, " in text
    from mmprep.registry import Registry, first_party_hint, load

    assert first_party_hint("llava-t2i") == "mmprep-llava" and first_party_hint("vae") == "mmprep-encoders"
    reg = load()
    msg = Registry.unknown_message(reg, "writer", "mds") if "mds" not in reg.components["writer"] else "pip install mmprep-mds"
    assert "pip install mmprep-mds" in msg


def test_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    doc = {"datasets": [{"name": "a", "source": {"type": "parquet", "path": "${DATA_DIR}/x.parquet", "storage_options": {"key": "${S3_KEY:-anon}"}}}], "write": ["parquet"]}
    p = Pipeline.from_dict(doc, base_dir=tmp_path)
    assert p.doc["datasets"][0]["source"]["path"] == f"{tmp_path}/x.parquet"
    assert p.worker_doc["datasets"][0]["source"]["storage_options"] == {"key": "anon"}
    assert p.doc["datasets"][0]["source"]["storage_options"] == {"key": "***"}
    doc["datasets"][0]["source"]["path"] = "${NOPE_NOT_SET}/x"
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.source\.path: environment variable NOPE_NOT_SET is not set"):
        Pipeline.from_dict(doc, base_dir=tmp_path)


def test_cli_config_error_exit_2_nothing_written(tmp_path, capsys):
    p = write(tmp_path, {"datasets": [{"name": "a", "source": {"type": "parquet", "path": "missing.parquet"}}], "write": ["parquet"]})
    rc = main(["run", str(p), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{p}: datasets[0].source.path: no file matches 'missing.parquet'" in err
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_and_missing_file(tmp_path, capsys):
    p = write(tmp_path, "datasets: [\n  - name: a\n    source: {type: parquet\n")
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "invalid YAML: line" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: pipeline file not found" in capsys.readouterr().err


def test_shorthand_and_defaults_in_normalised_doc(tmp_path):
    doc = {"datasets": [{"name": "a", "source": {"type": "parquet", "path": "x"}}], "format": ["caption-clean"], "write": ["jsonl"]}
    p = Pipeline.from_dict(doc, base_dir=tmp_path)
    assert p.doc["format"][0]["normalize"] == "NFC"
    assert p.doc["write"][0] == {"type": "jsonl", "path": "", "columns": None, "exclude": [], "binary": "drop"}
    h1 = p.config_hash
    doc["run"] = {"workers": 8}
    assert Pipeline.from_dict(doc, base_dir=tmp_path).config_hash == h1
    doc["run"] = {"seed": 8}
    assert Pipeline.from_dict(doc, base_dir=tmp_path).config_hash != h1


def test_cli_set_override(tmp_path):
    import polars as pl

    pl.DataFrame({"caption": list("abcdef")}).write_parquet(tmp_path / "d.parquet")
    p = write(tmp_path, {"datasets": [{"name": "a", "source": {"type": "parquet", "path": "d.parquet"}}], "write": ["parquet"]})
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "-q", "--set", "run.samples_per_unit=2"]) == 0
    assert len(list((tmp_path / "o").glob("*.parquet"))) == 3


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from mmprep.cli import main; main(['plugins']); main(['components']); bad=[m for m in ('torch','diffusers','transformers','streaming','webdataset') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-2000:]


def test_docs_config_is_current():
    """docs/config.md is generated by `mmprep schema --markdown`; regenerate it when this fails."""
    from mmprep.docgen import render

    from ..conftest import REPO

    assert (REPO / "docs" / "config.md").read_text() == render(), "docs/config.md is stale: run `mmprep schema --markdown > docs/config.md`"


def test_credentials_masked_in_stored_doc_but_kept_for_workers(tmp_path):
    doc = {
        "datasets": [{"name": "a", "key": {"column": "id"}, "source": {"type": "parquet", "path": "s3://u:pw@bucket/x.parquet", "storage_options": {"key": "AKIAEXAMPLEKEY", "secret": "s3cr3t-value", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}}}],
        "write": ["parquet"],
    }
    p = Pipeline.from_dict(doc, base_dir=tmp_path)
    stored = str(p.doc)
    assert "s3cr3t-value" not in stored and "AKIAEXAMPLEKEY" not in stored and "pw@" not in stored
    assert p.doc["datasets"][0]["key"] == {"column": "id", "prefix": None}
    assert p.doc["datasets"][0]["source"]["storage_options"]["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    assert p.worker_doc["datasets"][0]["source"]["storage_options"]["secret"] == "s3cr3t-value"
