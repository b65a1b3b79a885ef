"""P1 with LLaVA text-to-image payloads: mmprep (llava-t2i + llava-jsonl through the engine)
vs pandas loops calling LaViDa-O's per-row function with the same templates.

    .venv/bin/python bench/llava.py --rows 10000000 --sample 1000000 [--workers 2] [--rounds 1]

The shape of the core issue's P1 (bench/p1.py): N input rows -> keep aesthetic > 5.67 and both
sides >= 512 -> a random sample -> one payload per row -> JSON lines. The input has LaViDa-O's
columns (s3_path, caption, fltLaionAesthScore, intWidth, intHeight); captions are
multi-sentence, ~30% longer than 150 characters (those are eligible for the random sentence
truncation). It is generated once and cached under --data-dir (default /tmp).

Implementations, timed from reading the parquet to the last line written:

* mmprep: a native pipeline (aesthetic + min-size filters, sampling random:S, llava-t2i,
  llava-jsonl) run by the engine with --workers processes;
* pandas iterrows (P1's baseline): read, filter, ``df.sample``, then ``df.iterrows()`` calling
  :func:`preproces_text_to_image_generation_s3` per row (LaViDa-O itself does ``df.iloc[i]``
  per sample, which is slower still);
* pandas records: the same with ``df.to_dict("records")``, the fastest plain pandas loop.

The per-row function is LaViDa-O's with its ``random.random()`` / ``random.randint`` draws
replaced by mmprep's per-key draws (computed for the sampled keys before the loop), so the
payloads are comparable: after timing, the first 2,000 lines of each side are checked to be
byte-identical to the other side's function applied to the same source rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

MICRO = "[[micro_conds_texts]]"
NAME = "t2i"  # dataset name: mmprep keys are "t2i-<source row index, 9 digits>"
AES, MIN_SIZE = 5.67, 512
CHECK = 2000
VOCAB = (
    "a an the red blue green old young small large dog cat man woman child tree house car street river mountain sky "
    "cloud beach city field flower bird horse boat bridge window table chair lamp book painting photo of with on in "
    "near under over beside standing sitting walking running bright dark sunny rainy wooden metal glass stone"
).split()


# -- data ------------------------------------------------------------------------------------
def _chunk(start: int, m: int, rng: np.random.Generator) -> pl.DataFrame:
    long = rng.random(m) < 0.30
    n_words = np.where(long, rng.integers(30, 90, m), rng.integers(5, 20, m)).astype(np.int64)
    total = int(n_words.sum())
    offsets = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(n_words, out=offsets[1:])
    ends = rng.random(total) < 0.1  # a sentence ends every ~10 words...
    ends[offsets[1:] - 1] = True  # ...and at the end of the caption
    idx = rng.integers(0, len(VOCAB), total) * 2 + ends
    words = pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array([w + s for w in VOCAB for s in ("", ".")]))
    lists = pa.ListArray.from_arrays(pa.array(offsets), words.cast(pa.string()))
    caps = pl.Series("c", lists).list.join(" ")
    caps = caps.str.slice(0, 1).str.to_uppercase() + caps.str.slice(1)
    return pl.DataFrame(
        {
            "s3_path": pl.select(pl.format("s3://bucket/images/{}.jpg", pl.int_range(start, start + m).cast(pl.String).str.zfill(9))).to_series(),
            "caption": caps,
            "fltLaionAesthScore": rng.uniform(3, 8, m),
            "intWidth": rng.integers(200, 2500, m).astype(np.int32),
            "intHeight": rng.integers(200, 2500, m).astype(np.int32),
        }
    )


def make_data(path: Path, rows: int) -> None:
    """LaViDa-O-shaped input, generated in 1M-row chunks, cached (reused when the row count matches)."""
    if path.exists() and pl.scan_parquet(path).select(pl.len()).collect().item() == rows:
        return
    rng = np.random.default_rng(0)
    parts = []
    for start in range(0, rows, 1_000_000):
        p = path.with_name(f"{path.stem}.part{start}.parquet")
        _chunk(start, min(1_000_000, rows - start), rng).write_parquet(p)
        parts.append(p)
    tmp = path.with_suffix(".tmp")
    pl.scan_parquet(parts).sink_parquet(tmp)
    os.replace(tmp, path)
    for p in parts:
        p.unlink()


# -- LaViDa-O's per-row function ---------------------------------------------------------------
def randomly_select_sentences(caption: str, u: float) -> str:
    sentences = re.split(r"(?<=[.!?]) +", caption.strip())
    k = int(u * len(sentences)) + 1  # random.randint(1, len(sentences)), from the per-key draw
    return " ".join(sentences[:k])


def preproces_text_to_image_generation_s3(data, key: str, u_trunc: float, u_k: float, caption_key: str = "caption", max_len: int = 800) -> dict:
    """LaViDa-O llava/train/data/text_image.py, per row (per-key draws instead of ``random``)."""
    caption = data[caption_key]
    if u_trunc < 0.2 and len(caption) > 150:  # random.random() < 0.2
        caption = randomly_select_sentences(caption, u_k)
    if len(caption) > max_len:
        caption = caption[:max_len]
    payload = {
        "id": key,
        "image_gen": data["s3_path"],
        "conversations": [
            {"from": "human", "value": f"Generate an image with the caption: {caption} {MICRO}"},
            {"from": "gpt", "value": "Sure <image_gen>"},
        ],
    }
    if "fltLaionAesthScore" in data:
        payload["gen_score"] = [data["fltLaionAesthScore"]]
    if "hpsv2" in data:
        payload["hpsv2"] = [data["hpsv2"]]
    return payload


def dumps(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _keys_and_draws(index, seed: int):
    from mmprep.hashing import unit_floats

    keys = [f"{NAME}-{i:09d}" for i in index]  # mmprep's derived key: the source row index
    ks = pl.Series(keys)
    return keys, unit_floats(ks, seed=seed * 16 + 1), unit_floats(ks, seed=seed * 16 + 2)


def _read_filter_sample(src: Path, n: int, seed: int):
    import pandas as pd

    df = pd.read_parquet(src)
    df = df[(df["fltLaionAesthScore"] > AES) & (df["intWidth"] >= MIN_SIZE) & (df["intHeight"] >= MIN_SIZE)]
    return df.sample(n=n, random_state=seed)


def run_pandas_iterrows(src: Path, out: Path, n: int, seed: int) -> None:
    df = _read_filter_sample(src, n, seed)
    keys, u_trunc, u_k = _keys_and_draws(df.index, seed)
    with open(out, "w") as fh:
        for j, (_, row) in enumerate(df.iterrows()):
            fh.write(dumps(preproces_text_to_image_generation_s3(row, keys[j], u_trunc[j], u_k[j])) + "\n")


def run_pandas_records(src: Path, out: Path, n: int, seed: int) -> None:
    df = _read_filter_sample(src, n, seed)
    keys, u_trunc, u_k = _keys_and_draws(df.index, seed)
    with open(out, "w") as fh:
        for j, rec in enumerate(df.to_dict("records")):
            fh.write(dumps(preproces_text_to_image_generation_s3(rec, keys[j], u_trunc[j], u_k[j])) + "\n")


# -- mmprep ------------------------------------------------------------------------------------
def pipeline_doc(src: Path, n: int, workers: int, seed: int) -> dict:
    return {
        "datasets": [
            {
                "name": NAME,
                "source": {"type": "parquet", "path": str(src)},
                "filters": [
                    {"type": "aesthetic", "column": "fltLaionAesthScore", "cutoff": AES},
                    {"type": "min-size", "min_size": MIN_SIZE, "width_column": "intWidth", "height_column": "intHeight"},
                ],
                "sampling": f"random:{n}",
            }
        ],
        "format": [{"type": "llava-t2i"}],
        "write": [{"type": "llava-jsonl"}],
        "run": {"workers": workers, "samples_per_unit": max(1, n // (workers * 4)), "seed": seed},
    }


def run_mmprep(src: Path, out: Path, n: int, workers: int, seed: int) -> None:
    from mmprep import Pipeline

    res = Pipeline.from_dict(pipeline_doc(src, n, workers, seed), base_dir=src.parent).run(out=str(out), quiet=True, overwrite=True)
    t = res.manifest["totals"]
    assert t["written"] == n, t


def mmprep_lines(out: Path, k: int) -> list[str]:
    lines: list[str] = []
    for f in sorted(out.glob("part-*.jsonl")):
        with open(f) as fh:
            for line in fh:
                lines.append(line.rstrip("\n"))
                if len(lines) == k:
                    return lines
    return lines


# -- checks ------------------------------------------------------------------------------------
def check(src: Path, mm_out: Path, pd_files: dict[str, Path], seed: int) -> list[str]:
    """The first CHECK lines of every side equal the other side's function on the same rows."""
    from mmprep import Context
    from mmprep_llava.formatters import T2IFormatter

    notes = []
    source = pl.read_parquet(src).with_row_index("row")
    # mmprep -> LaViDa-O's function on the same source rows
    mm = mmprep_lines(mm_out, CHECK)
    rows = [int(json.loads(line)["id"].rsplit("-", 1)[1]) for line in mm]
    sub = source[rows].to_pandas().set_index("row")
    keys, u_trunc, u_k = _keys_and_draws(sub.index, seed)
    ref = [dumps(preproces_text_to_image_generation_s3(r, keys[j], u_trunc[j], u_k[j])) for j, (_, r) in enumerate(sub.iterrows())]
    same = sum(a == b for a, b in zip(mm, ref))
    assert same == len(mm) == CHECK, f"mmprep vs per-row function: {same}/{len(mm)} identical"
    cut = sum(f"caption: {c} {MICRO}" not in line for c, line in zip(sub["caption"], mm))
    notes.append(f"mmprep's first {len(mm)} lines == the per-row function on the same source rows: {same}/{len(mm)} byte-identical "
                 f"({cut} of them with a truncated caption)")
    # each pandas side -> mmprep's formatter on the same rows
    fmt = T2IFormatter(T2IFormatter.Options(), Context(seed=seed))
    first = None
    for name, path in pd_files.items():
        with open(path) as fh:
            lines = [next(fh).rstrip("\n") for _ in range(CHECK)]
        rows = [int(json.loads(line)["id"].rsplit("-", 1)[1]) for line in lines]
        frame = source[rows].with_columns(pl.format("{}-{}", pl.lit(NAME), pl.col("row").cast(pl.String).str.zfill(9)).alias("key"))
        got = fmt.format(frame)["llava"].to_list()
        same = sum(a == b for a, b in zip(lines, got))
        assert same == CHECK, f"{name} vs mmprep's formatter: {same}/{CHECK} identical"
        notes.append(f"{name}: first {CHECK} lines == mmprep's llava-t2i on the same rows: {same}/{CHECK} byte-identical")
        if first is not None:
            assert lines == first, f"{name} and the other pandas loop disagree"
        first = lines
    return notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="input rows")
    ap.add_argument("--sample", type=int, default=1_000_000, help="rows drawn after the filters (random:N)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=1, help="run every implementation this many times, interleaved; medians reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="/tmp/mmprep-llava-bench", help="where the generated input is cached")
    ap.add_argument("--skip-iterrows", action="store_true")
    ap.add_argument("--skip-records", action="store_true")
    a = ap.parse_args()

    data_dir = Path(a.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / f"llava-{a.rows}.parquet"
    t0 = time.perf_counter()
    make_data(src, a.rows)
    st = pl.scan_parquet(src).select(
        (pl.col("caption").str.len_chars() > 150).mean().alias("long"),
        pl.col("caption").str.len_chars().mean().alias("mean"),
        ((pl.col("fltLaionAesthScore") > AES) & (pl.col("intWidth") >= MIN_SIZE) & (pl.col("intHeight") >= MIN_SIZE)).sum().alias("kept"),
    ).collect().row(0, named=True)
    print(f"data: {a.rows:,} rows, {st['long']:.1%} captions > 150 chars, mean {st['mean']:.0f} chars, "
          f"{st['kept']:,} pass the filters ({time.perf_counter() - t0:.1f} s, cached in {data_dir})")
    sample = min(a.sample, st["kept"])

    # imports and plugin discovery before timing, on every side
    import pandas  # noqa: F401

    from mmprep.registry import load

    load()
    impls = {"mmprep": None}
    if not a.skip_iterrows:
        impls["pandas iterrows"] = run_pandas_iterrows
    if not a.skip_records:
        impls["pandas to_dict(records)"] = run_pandas_records
    times: dict[str, list[float]] = {k: [] for k in impls}
    tmp = Path(tempfile.mkdtemp(prefix="bench-llava-", dir=data_dir))
    try:
        files = {k: tmp / f"{k.split()[-1].strip('()')}.jsonl" for k in impls if k != "mmprep"}
        for _ in range(a.rounds):
            for k, fn in impls.items():
                t = time.perf_counter()
                if fn is None:
                    run_mmprep(src, tmp / "mmprep", sample, a.workers, a.seed)
                else:
                    fn(src, files[k], sample, a.seed)
                times[k].append(time.perf_counter() - t)
                print(f"  {k}: {times[k][-1]:.2f} s", flush=True)
        notes = check(src, tmp / "mmprep", files, a.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nP1 llava: {a.rows:,} rows -> aesthetic > {AES} & min side >= {MIN_SIZE} -> random:{sample:,} -> llava-t2i -> jsonl "
          f"(workers={a.workers}, cpus={os.cpu_count()}, rounds={a.rounds})")
    print("| implementation | seconds | rows/s (sampled) | mmprep speed-up |")
    print("|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {sample / v:,.0f} | {v / med['mmprep']:.1f}x |")
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
