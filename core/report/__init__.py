"""Reports on datasets: ``mmprep preview`` (HTML contact sheet, histograms, rejections,
throughput, manifest summary) for mmprep outputs and for WebDataset / MDS / parquet /
LLaVA JSONL datasets mmprep did not write.

Importing this package is cheap; matplotlib, PIL and streaming load only when a report is
built.
"""

from __future__ import annotations

import argparse
import sys


def build_report(*args, **kwargs):
    """See :func:`mmprep.report.preview.build_report`."""
    from .preview import build_report as _build

    return _build(*args, **kwargs)


def configure_preview(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an mmprep output dir, or a dataset: WebDataset tar/dir/glob, MDS dir, parquet file/dir, (LLaVA) JSONL")
    p.add_argument("--samples", type=int, default=24, help="samples on the contact sheet (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw of samples")
    p.add_argument("--html", help="output HTML file (default: OUT/_mmprep/preview.html, or ./<name>.preview.html)")
    p.add_argument("--numeric", action="append", default=[], metavar="COLUMN", help="also histogram this numeric column (repeatable)")
    p.add_argument("--writer", type=int, help="mmprep outputs: read samples from this writer (index in the manifest)")
    p.add_argument("--image-root", help="directory that relative image paths (LLaVA 'image') resolve against")
    p.add_argument("--stats-cap", type=int, default=200_000, help="at most this many samples per histogram series")


def run_preview(args: argparse.Namespace) -> int:
    from ..errors import MmprepError

    try:
        path = build_report(
            args.path, html_path=args.html, samples=args.samples, seed=args.seed, numeric=args.numeric,
            writer=args.writer, stats_cap=args.stats_cap, image_root=args.image_root,
        )
    except (FileNotFoundError, ValueError) as e:
        raise MmprepError(str(e)) from None
    print(f"mmprep preview: wrote {path}", file=sys.stderr)
    return 0


__all__ = ["build_report", "configure_preview", "run_preview"]
