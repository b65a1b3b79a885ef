"""mmprep preview: the HTML report rendered for real in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmprep.cli import main
from mmprep.report import build_report
from mmprep.report.readers import detect, open_view


def _check_rendered(check: dict, n_images: int, charts: set[str]) -> None:
    imgs = check["images"]
    assert len(imgs) == n_images, imgs
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in imgs), imgs
    names = {c["name"] for c in check["charts"]}
    assert charts <= names, (charts - names, names)
    assert all(c["width"] > 100 and c["height"] > 100 for c in check["charts"]), check["charts"]


def test_preview_of_a_run_renders_in_chromium(mmprep_output, render, tmp_path):
    manifest = json.loads((mmprep_output / "_mmprep" / "manifest.json").read_text())
    written = manifest["totals"]["written"]
    assert written == 8 and manifest["datasets"]["photos"]["filtered"] == {"filter:aesthetic": 1}
    html = tmp_path / "report.html"
    assert main(["preview", str(mmprep_output), "--samples", "6", "--seed", "1", "--html", str(html)]) == 0
    text = html.read_text()
    # self-contained: no network references, images embedded
    import re

    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\((https?:)?//|@import""", text)
    assert text.count('src="data:image/jpeg;base64,') == 6
    check = render(html, "run", height=4200)
    _check_rendered(check, 6, {"hist-width", "hist-height", "hist-aspect", "hist-caption_len", "hist-score",
                               "funnel-photos", "rejections", "throughput", "stages"})
    # the manifest summary, rejections with example keys/messages, and the config hash are shown
    assert manifest["config_hash"] in text
    for reason, ex in manifest["rejection_examples"].items():
        assert reason in text and ex[0]["key"] in text
    assert {"too_small", "decode_error", "not_found"} <= set(manifest["totals"]["rejected_by_reason"])
    # the drawn samples are written keys; original and stored size shown
    import polars as pl

    keys = set(pl.read_parquet(sorted((mmprep_output / "pq").glob("*.parquet")))["key"].to_list())
    drawn = {i["key"] for i in check["images"]}
    assert drawn <= keys and len(drawn) == 6
    assert "original 800×600 → stored 341×256" in text or "original 640×480 → stored 341×256" in text


def test_default_html_location_and_seeded_draw(mmprep_output):
    p1 = build_report(mmprep_output, samples=3, seed=5)
    assert p1 == mmprep_output / "_mmprep" / "preview.html"
    keys = lambda t: [line.split('data-key="')[1].split('"')[0] for line in t.split("<img")[1:]]  # noqa: E731
    a = keys(p1.read_text())
    b = keys(build_report(mmprep_output, samples=3, seed=5).read_text())
    assert a == b and len(a) == 3
    v = open_view("parquet", str(mmprep_output / "pq"))
    assert [s.key for s in v.samples(3, 5)] == a  # the report shows exactly the view's seeded draw
    draws = {tuple(s.key for s in v.samples(3, seed)) for seed in range(6)}
    assert len(draws) > 1  # other seeds draw other samples


def test_preview_reads_each_writer(mmprep_output, tmp_path):
    """Samples come from the writer asked for; the tar shards give the same keys as parquet."""
    m = json.loads((mmprep_output / "_mmprep" / "manifest.json").read_text())
    assert [w["type"] for w in m["writers"]] == ["parquet", "webdataset"]
    texts = {}
    for i in range(2):
        h = tmp_path / f"w{i}.html"
        build_report(mmprep_output, html_path=h, samples=8, writer=i)
        texts[i] = h.read_text()
        assert f"samples read from writer {i}" in texts[i]
    for t in texts.values():
        assert t.count('src="data:image/jpeg;base64,') == 8


@pytest.mark.parametrize("fmt", ["webdataset", "mds", "parquet", "llava"])
def test_preview_of_foreign_datasets_renders(fmt, foreign, render, tmp_path):
    path = foreign[fmt]
    assert detect(str(path)) == ("jsonl" if fmt == "llava" else fmt)
    html = tmp_path / f"{fmt}.html"
    build_report(path, html_path=html, samples=5, numeric=["aesthetic"] if fmt in ("webdataset", "parquet") else [])
    text = html.read_text()
    check = render(html, f"foreign-{fmt}", height=2200)
    expected = {"hist-caption_len"} | ({"hist-width", "hist-height", "hist-aspect"} if fmt != "parquet" else set())
    if fmt in ("webdataset", "parquet"):
        expected.add("hist-aesthetic")
    _check_rendered(check, 5, expected)
    assert "caption of sample" in text
    if fmt == "llava":  # conversations rendered as turns
        assert '<div class="turn human"><b>human</b>' in text and '<div class="turn gpt"><b>gpt</b> caption of sample' in text
    if fmt == "webdataset":
        assert all(i["key"].startswith("sample") for i in check["images"])


def test_foreign_views_count_and_stats(foreign):
    for fmt, path in foreign.items():
        v = open_view(detect(str(path)), str(path))
        assert v.count() == 8, fmt
        st = v.stats(["aesthetic"], 100)
        assert st.height == 8 and st["caption_len"].null_count() == 0, (fmt, st)
        if fmt in ("webdataset", "mds"):
            assert sorted(st["width"].to_list()) == sorted([640, 480, 800, 512, 700, 600, 1024, 520])


def test_glob_of_tars_and_bad_paths(foreign, tmp_path):
    html = tmp_path / "g.html"
    build_report(str(foreign["webdataset"] / "shard-*.tar"), html_path=html, samples=2)
    assert html.read_text().count("data:image/jpeg;base64,") == 2
    assert main(["preview", str(tmp_path / "nothing-here"), "--html", str(tmp_path / "x.html")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["preview", str(tmp_path / "empty")]) == 1


def test_cli_help_stays_light():
    code = ("import sys; from mmprep.cli import build_parser; p, _ = build_parser(); "
            "bad = [m for m in ('matplotlib', 'torch', 'streaming', 'PIL') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    r = subprocess.run([str(Path(sys.executable).parent / "mmprep"), "preview", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--samples" in r.stdout and "--numeric" in r.stdout
