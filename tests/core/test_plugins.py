"""Third-party plugin discovery through entry points (examples/plugins/mmprep-aspect)."""

import json
import subprocess
import sys
from importlib import metadata

import polars as pl
import pytest
import yaml

from mmprep import PluginError
from mmprep.cli import main
from mmprep.registry import load


def test_example_plugin_is_installed_via_entry_point():
    eps = {e.name: e for e in metadata.entry_points(group="mmprep")}
    assert "aspect" in eps and eps["aspect"].dist.name == "mmprep-aspect"
    reg = load(refresh=True)
    assert reg.provider("filter", "aspect").distribution == "mmprep-aspect"


def test_plugins_command_lists_it(capsys):
    assert main(["plugins"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["aspect"]["distribution"] == "mmprep-aspect"
    assert plugins["aspect"]["version"] == "0.1.0"
    assert plugins["aspect"]["components"] == {"filter": ["aspect"]}
    assert plugins["aspect"]["hooks"] == ["register_filters"]
    assert plugins["builtin"]["distribution"] == "mmprep"


def test_components_and_schema_include_it(capsys):
    assert main(["components", "filter", "--json"]) == 0
    comps = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert comps["aspect"]["options"]["min_ratio"] == {"type": "number", "default": 0.5, "description": "Smallest width/height kept"}
    assert comps["aspect"]["plugin"] == "mmprep-aspect"
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    filt = schema["properties"]["datasets"]["items"]["properties"]["filters"]["items"]["anyOf"]
    assert any(f.get("title") == "filter aspect" for f in filt)


def test_usable_from_yaml_and_disable_var(tmp_path, mmprep_env):
    pl.DataFrame({"width": [100, 300, 100], "height": [100, 100, 250], "caption": ["sq", "wide", "tall"]}).write_parquet(tmp_path / "d.parquet")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": "d.parquet"}, "filters": [{"type": "aspect", "min_ratio": 0.5, "max_ratio": 2.0}]}],
        "write": [{"type": "jsonl"}],
    }))
    r = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(tmp_path / "o"), "-q"], env=mmprep_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "o" / "part-d-00000.jsonl").read_text().splitlines()]
    assert [x["caption"] for x in rows] == ["sq"]
    m = json.loads((tmp_path / "o" / "_mmprep" / "manifest.json").read_text())
    assert m["datasets"]["d"]["filtered"] == {"bad_aspect_ratio": 2}
    assert m["plugins"]["mmprep-aspect"] == "0.1.0"
    env = dict(mmprep_env, MMPREP_DISABLE_PLUGINS="aspect")
    r = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(tmp_path / "o2")], env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown filter 'aspect'" in r.stderr and not (tmp_path / "o2").exists()


def test_broken_plugin_named_with_distribution(monkeypatch):
    real = metadata.entry_points

    class FakeDist:
        name = "mmprep-broken"

    ep = metadata.EntryPoint(name="broken", value="mmprep_does_not_exist_xyz", group="mmprep")
    object.__setattr__(ep, "dist", FakeDist())

    def fake(**kw):
        eps = list(real(**kw))
        return eps + [ep] if kw.get("group") == "mmprep" else real(**kw)

    monkeypatch.setattr(metadata, "entry_points", fake)
    with pytest.raises(PluginError, match=r"plugin 'broken' from distribution mmprep-broken failed to import .*MMPREP_DISABLE_PLUGINS=broken"):
        load(refresh=True)
    monkeypatch.setenv("MMPREP_DISABLE_PLUGINS", "broken")
    reg = load(refresh=True)
    assert "broken" not in reg.plugins
    monkeypatch.undo()
    load(refresh=True)


def test_two_components_same_name_is_error():
    import pluggy

    from mmprep import Filter, hookimpl, hookspecs
    from mmprep.registry import PluginInfo, Registry

    class A(Filter):
        """a"""

        name = "dupe"

    class B(Filter):
        """b"""

        name = "dupe"

    class P1:
        @hookimpl
        def register_filters(self, register):
            register(A)

    class P2:
        @hookimpl
        def register_filters(self, register):
            register(B)

    pm = pluggy.PluginManager("mmprep")
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    for name, plug, dist in (("one", P1(), "dist-one"), ("two", P2(), "dist-two")):
        pm.register(plug, name=name)
        reg.plugins[name] = PluginInfo(name=name, distribution=dist)
    with pytest.raises(PluginError, match=r"two filters named 'dupe': one from plugin 'one' \(dist-one\), one from plugin 'two' \(dist-two\)"):
        reg._collect()


def test_bad_component_name_rejected():
    import pluggy

    from mmprep import Filter, hookimpl, hookspecs
    from mmprep.registry import PluginInfo, Registry

    class Bad(Filter):
        """bad"""

        name = "Bad_Name"

    class P:
        @hookimpl
        def register_filters(self, register):
            register(Bad)

    pm = pluggy.PluginManager("mmprep")
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    pm.register(P(), name="p")
    reg.plugins["p"] = PluginInfo(name="p", distribution="d")
    with pytest.raises(PluginError, match="invalid name 'Bad_Name'"):
        reg._collect()
