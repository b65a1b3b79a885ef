"""The ``mmprep`` command line. ``main(argv)`` also works from Python with a list."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, MmprepError


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class CommandRegistry:
    """What ``register_commands(cli)`` receives: ``cli.add(name, help, configure, run)``."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def add(self, name: str, help: str, configure: Callable[[argparse.ArgumentParser], None], run: Callable[[argparse.Namespace], int]) -> None:
        if name in self.commands:
            raise MmprepError(f"command {name!r} is registered twice")
        self.commands[name] = Command(name, help, configure, run)


# -- built-in commands ----------------------------------------------------------------------
def _cfg_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML (native, or a dialect a plugin translates)")
    p.add_argument("--out", help="output directory (overrides run.out)")
    p.add_argument("--workers", type=int, help="worker processes (overrides run.workers)")
    p.add_argument("--shard", help="array mode: run only share I of N (I/N); also SLURM_ARRAY_TASK_ID/COUNT, RANK/WORLD_SIZE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output of a different pipeline")
    p.add_argument("--dry-run", nargs="?", const="plan", choices=["plan", "measure"], help="validate and plan only (=measure: also time a short sample of the stages)")
    p.add_argument("--retry-failed", action="store_true", help="redo units with retryable rejections (timeouts, 5xx...)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a config value, e.g. run.seed=3")
    p.add_argument("--work-dir", help="for an object-store --out (s3://...): the local work directory (run.work_dir)")


def _parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE")
        path, value = item.split("=", 1)
        cur = out
        parts = path.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = yaml.safe_load(value)
    return out


def _run(args: argparse.Namespace) -> int:
    from .config import load_pipeline
    from .engine import parse_shard, run

    sets = list(args.set) + ([f"run.work_dir={json.dumps(args.work_dir)}"] if args.work_dir else [])
    pipeline = load_pipeline(args.pipeline, overrides=_parse_sets(sets) or None)
    for w in pipeline.warnings:
        print(f"mmprep: warning: {w}", file=sys.stderr)
    shard = parse_shard(args.shard) if args.shard else None
    res = run(
        pipeline,
        out=args.out,
        workers=args.workers,
        shard=shard,
        overwrite=args.overwrite or None,
        dry_run_only=args.dry_run or False,
        quiet=args.quiet,
        retry_failed=args.retry_failed,
    )
    if res.dry_run is not None:
        from .dryrun import format_dry_run

        print(format_dry_run(res.dry_run))
        return 0
    if res.failed:
        print(f"mmprep: {len(res.failed)} units failed; rerun the same command to redo them", file=sys.stderr)
        return 1
    if not args.quiet:
        if res.manifest is not None:
            t = res.manifest["totals"]
            print(
                f"mmprep: done: {t['written']} written, {t['rejected']} rejected of {t['planned']} planned "
                f"({t['source_rows']} source rows, {t['filtered']} filtered out, {t['sampled_out']} not sampled) -> {res.remote or res.out}",
                file=sys.stderr,
            )
        else:
            print(f"mmprep: this share is done ({res.units_done} units); the last share to finish finalizes (or: mmprep finalize {res.remote or res.out})", file=sys.stderr)
    if getattr(args, "report", False) and res.manifest is not None:
        from .report import build_report

        print(f"mmprep: report: {build_report(res.out)}", file=sys.stderr)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from .registry import load

    reg = load()
    print(json.dumps([info.as_dict() for info in reg.plugins.values()], indent=2))
    return 0


def _cfg_components(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", choices=["source", "filter", "formatter", "encoder", "writer"], help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _components(args: argparse.Namespace) -> int:
    from .registry import load

    reg = load()
    kinds = [args.kind] if args.kind else list(reg.components)
    items = []
    for kind in kinds:
        for name in sorted(reg.components[kind]):
            d = reg.components[kind][name].describe()
            d["plugin"] = reg.provider(kind, name).distribution
            items.append(d)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for d in items:
        print(f"{d['kind']:<9} {d['name']:<24} {d['doc']}  [{d['plugin']}]")
        for opt, info in d["options"].items():
            default = "required" if info.get("required") else f"default {json.dumps(info.get('default'))}"
            print(f"{'':<35}{opt}: {info['type']} ({default})")
    return 0


def _cfg_schema(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true", help="the configuration reference (docs/config.md) instead")


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from .docgen import render

        sys.stdout.write(render())
        return 0
    from .schema import pipeline_schema

    print(json.dumps(pipeline_schema(), indent=2))
    return 0


def _cfg_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory of a run, or its object-store URL (credentials from the environment)")


def _cfg_finalize(p: argparse.ArgumentParser) -> None:
    _cfg_out(p)
    p.add_argument("--work-dir", help="for an object-store output: the local work directory (default: as mmprep run)")


def _finalize(args: argparse.Namespace) -> int:
    from .storage import is_local

    if is_local(args.out):
        from .engine import finalize

        m = finalize(args.out)
    else:
        from .remote import finalize_url

        m = finalize_url(args.out, args.work_dir)
    t = m["totals"]
    print(f"mmprep: finalized {args.out}: {t['written']} written, {t['rejected']} rejected of {t['planned']} planned", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .storage import is_local

    if is_local(args.out):
        from .engine import verify

        problems = verify(args.out)
    else:
        from .remote import verify_url

        problems = verify_url(args.out)
    for p in problems:
        print(p)
    if problems:
        print(f"mmprep verify: {len(problems)} problems in {args.out}", file=sys.stderr)
        return 1
    print(f"mmprep verify: {args.out} OK", file=sys.stderr)
    return 0


def _builtin_commands(cli: CommandRegistry) -> None:
    cli.add("run", "validate, plan and run a pipeline (resumable)",
            lambda p: (_cfg_run(p), p.add_argument("--report", action="store_true", help="also write OUT/_mmprep/preview.html (mmprep preview)")), _run)
    cli.add("plugins", "list loaded plugins as JSON", lambda p: None, _plugins)
    cli.add("components", "list components with their options", _cfg_components, _components)
    cli.add("schema", "JSON Schema of the pipeline file (all installed plugins)", _cfg_schema, _schema)
    cli.add("finalize", "finalize a run whose units are all complete (array mode)", _cfg_finalize, _finalize)
    cli.add("verify", "check an output directory against its manifest", _cfg_out, _verify)
    cli.add("preview", "write an HTML report (samples, histograms, rejections, timings) of an output or any dataset",
            lambda p: __import__("mmprep.report", fromlist=["x"]).configure_preview(p),
            lambda a: __import__("mmprep.report", fromlist=["x"]).run_preview(a))
    cli.add("init", "write a starter pipeline for a seed workflow (mmprep init --list)",
            lambda p: __import__("mmprep.recipes", fromlist=["x"]).configure_init(p),
            lambda a: __import__("mmprep.recipes", fromlist=["x"]).run_init(a))


def build_parser() -> tuple[argparse.ArgumentParser, CommandRegistry]:
    from .registry import load

    cli = CommandRegistry()
    _builtin_commands(cli)
    reg = load()
    reg.pm.hook.register_commands(cli=cli)
    parser = argparse.ArgumentParser(prog="mmprep", description="Preprocess image-text data into training-ready datasets.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in cli.commands.values():
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(sp)
        sp.set_defaults(_run=cmd.run)
    return parser, cli


def main(argv: list[str] | None = None) -> int:
    try:
        parser, _ = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING), format="%(name)s: %(message)s")
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        return int(args._run(args) or 0)
    except MmprepError as e:
        print(f"mmprep: error: {e}" if not isinstance(e, ConfigError) else str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mmprep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
