"""The ``aam-search`` command. Thin on purpose: it parses, calls a package, and prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aam_search.cli_study import add_study_commands
from aam_search.errors import AamSearchError
from aam_search.protocol import Status
from aam_search.tracking.commands import add_tracking_commands

console = Console()
errors = Console(stderr=True)


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# ---------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> None:
    from rich.progress import Progress

    from aam_search.data.synth import synthesize
    from aam_search.data.synth_alt import synthesize_alt

    if args.generator == "alt" and args.bias is not None:
        raise SystemExit("--bias: only the default generator has a group-action bias, not --generator alt")
    with Progress(console=errors, transient=True) as bar:
        task = bar.add_task("writing videos", total=args.videos)
        common = dict(seed=args.seed, images=args.images, frames=args.frames, size=args.size,
                      progress=lambda done, total: bar.update(task, completed=done, total=total))
        if args.generator == "alt":
            report = synthesize_alt(Path(args.out), args.videos, **common)
        else:
            report = synthesize(Path(args.out), args.videos, bias=args.bias, **common)
    console.print(f"wrote [bold]{report.manifest}[/]")
    table = Table("split", "videos", "images")
    for split, count in report.videos_per_split.items():
        table.add_row(split, str(count), str(report.images_per_split.get(split, 0)))
    console.print(table)
    console.print(f"actions: {', '.join(report.action_classes)} (chance {report.action_chance:.3f})")
    chance = ", ".join(f"{name} {rate:.2f}" for name, rate in report.attr_chance.items())
    console.print(f"attribute chance levels (positive rate in test): {chance}")


def cmd_data_import(args: argparse.Namespace) -> None:
    from aam_search.data import importers

    if args.dataset == "pa-hmdb51":
        from aam_search.data.pa_hmdb51 import PA_ATTRIBUTES, import_pa_hmdb51

        missing = [f"--{name}" for name in ("videos", "annotations", "splits") if not getattr(args, name)]
        if missing:
            raise SystemExit(f"pa-hmdb51 needs {', '.join(missing)}")

        report = import_pa_hmdb51(
            Path(args.videos), Path(args.annotations), Path(args.splits), Path(args.out), split=args.split,
            rule=args.span_rule, attributes=tuple(args.attributes.split(",")) if args.attributes else PA_ATTRIBUTES,
            include_unannotated=args.include_unannotated, reviewed_only=args.reviewed_only,
            val_fraction=args.val_fraction, seed=args.seed,
        )
    elif args.dataset in ("ucf101", "hmdb51"):
        run = importers.import_ucf101 if args.dataset == "ucf101" else importers.import_hmdb51
        report = run(Path(args.videos), Path(args.splits), Path(args.out), split=args.split,
                     val_fraction=args.val_fraction, seed=args.seed)
    elif args.dataset == "kinetics":
        report = importers.import_kinetics(Path(args.videos), Path(args.annotations), Path(args.out))
    else:
        attributes = tuple(args.attributes.split(",")) if args.attributes else importers.VISPR_PAPER_ATTRIBUTES
        report = importers.import_vispr(Path(args.images), Path(args.annotations), Path(args.out),
                                        attributes=attributes)
    console.print(report.summary(), highlight=False)  # rows per split, skipped entries counted by reason
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} entries skipped[/], first ones:")
        for entry in report.skipped[:10]:
            console.print(f"  {entry}")


def cmd_data_merge(args: argparse.Namespace) -> None:
    from aam_search.data.manifest import read_manifest
    from aam_search.data.merge import merge_manifests

    merged = read_manifest(merge_manifests([Path(source) for source in args.manifests], Path(args.out)))
    console.print(f"wrote [bold]{merged.file}[/]: {len(merged.rows)} rows; attributes: {', '.join(merged.attr_names)}")


def cmd_data_check(args: argparse.Namespace) -> None:
    from aam_search.data.manifest import missing_files, read_manifest

    manifest = read_manifest(args.manifest)
    table = Table("split", "rows", "with action", "with attributes", "images")
    for split in ("train", "val", "test"):
        rows = manifest.split_rows(split)
        table.add_row(
            split,
            str(len(rows)),
            str(sum(r.action is not None for r in rows)),
            str(sum(any(v is not None for v in r.attrs.values()) for r in rows)),
            str(sum(r.is_image for r in rows)),
        )
    console.print(table)
    console.print(f"actions: {len(manifest.action_classes)}; attributes: {', '.join(manifest.attr_names)}")
    missing = missing_files(manifest)
    if missing:
        errors.print(f"[red]{len(missing)} files missing[/], e.g. row {missing[0].row}: {missing[0].rel_path}")
        raise SystemExit(1)


# ---------------------------------------------------------------- features
def _extract_config(args: argparse.Namespace):
    from aam_search.features.config import ExtractConfig, load_extract_config

    overrides: dict[str, Any] = {}
    if args.manifest:
        overrides["manifest"] = Path(args.manifest)
    if args.cache_root:
        overrides["cache_root"] = Path(args.cache_root)
    if args.strict:
        overrides["strict"] = True
    if args.workers:
        overrides["decode_workers"] = args.workers
    if args.encoder or args.encoder_option:
        overrides["encoder"] = {"name": args.encoder or "tiny3d", "options": dict(args.encoder_option or [])}
    if args.config:
        return load_extract_config(args.config, **overrides)
    if "manifest" not in overrides:
        raise SystemExit("give --config FILE or --manifest FILE")
    return ExtractConfig.model_validate(overrides)


def cmd_features_extract(args: argparse.Namespace) -> None:
    from aam_search.features.extract import extract_features

    result = extract_features(_extract_config(args), show_progress=not args.quiet)
    verb = "reused" if result.reused else "wrote"
    console.print(f"{verb} feature cache [bold]{result.cache.path}[/]")
    _print_cache(result.cache)


def cmd_features_info(args: argparse.Namespace) -> None:
    from aam_search.features.cache import FeatureCache

    cache = FeatureCache.open(args.cache)
    verified = cache.verify() if args.verify else None  # a changed file raises, naming it
    if args.json:
        extra = {} if verified is None else {"verified": verified}
        console.print_json(json.dumps({**cache.summary(), "skipped_videos": cache.meta["skipped"], **extra}))
        return
    _print_cache(cache)
    if verified is not None:
        for name, outcome in verified.items():
            note = "" if outcome == "ok" else " (extracted before hashes were recorded: size and header checked)"
            console.print(f"verified {name}: {outcome}{note}", highlight=False)


def _print_cache(cache) -> None:
    table = Table("field", "value", title="feature cache")
    for key, value in cache.summary().items():
        table.add_row(key, str(value))
    console.print(table)
    skipped = cache.meta["skipped"]
    if skipped:
        console.print(f"[yellow]{len(skipped)} video(s) skipped:[/]")
        for problem in skipped[:20]:
            console.print(f"  row {problem['row']} {problem['path']}: {problem['reason']}")


# ---------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from aam_search.trainer.config import load_trial_config
    from aam_search.trainer.train import run_trial

    result = run_trial(load_trial_config(args.config), Path(args.out))
    if result["status"] != Status.COMPLETED:
        errors.print(f"[red]trial {result['status']}:[/] {result['reason']}", soft_wrap=True)
        return 1
    if "utility" not in result:  # another rank of a multi-process trial: rank 0 evaluates and reports
        return 0
    console.print(
        f"utility {result['utility']:.3f} (raw {result['raw_utility']:.3f}), "
        f"leakage cMAP {result['leakage']:.3f} (raw {result['raw_leakage']:.3f}, chance "
        f"{result['leakage_chance']:.3f}), combined {result['combined_score']:.3f}; "
        f"{result['timings']['total_s']:.1f}s -> {args.out}"
    )
    return 0


def cmd_train_stack(args: argparse.Namespace) -> int:
    """Exit 0 once every member wrote its result.json (each says its own status): a diverged
    member is that trial's outcome, not the process's failure."""
    from aam_search.trainer.config import load_trial_config
    from aam_search.trainer.stack_recipe import run_stack

    results = run_stack([load_trial_config(c) for c in args.config], [Path(o) for o in args.out])
    for out, result in zip(args.out, results):
        line = f"{out}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else "")
        (console if result["status"] == Status.COMPLETED else errors).print(line, soft_wrap=True)
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from aam_search.demo import run_demo

    outcome = run_demo(Path(args.workdir), videos=args.videos, n_trials=args.trials, console=console)
    return 130 if outcome.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aam-search", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets: synthesize, import, check").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser("synth", help="write the synthetic privacy/action video dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--videos", type=int, default=240)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--bias", type=float, default=None, help="group-action co-occurrence in train")
    synth.add_argument("--images", type=int, default=0, help="privacy-only image rows (VISPR-like)")
    synth.add_argument("--frames", type=int, default=48)
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--generator", choices=["default", "alt"], default="default",
                       help="alt: another actor, attributes (hat, dotted, dark, tiled) and actions")
    synth.set_defaults(func=cmd_data_synth)

    imp = data.add_parser("import", help="turn a public dataset's annotation files into a manifest")
    imp.add_argument("dataset", choices=["ucf101", "hmdb51", "pa-hmdb51", "kinetics", "vispr"])
    imp.add_argument("--out", required=True, help="manifest CSV to write (at or above the media root)")
    imp.add_argument("--videos", help="videos root (ucf101, hmdb51, pa-hmdb51, kinetics)")
    imp.add_argument("--splits", help="folder of the split files (ucf101, hmdb51, pa-hmdb51)")
    imp.add_argument("--split", type=int, default=1)
    imp.add_argument("--val-fraction", type=float, default=0.1)
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--annotations", help="Kinetics CSV, VISPR or PA-HMDB51 (PrivacyAttributes) annotations folder")
    imp.add_argument("--images", help="VISPR images root")
    imp.add_argument("--attributes", help="VISPR attributes (default: the paper's 7) or PA-HMDB51 attributes "
                     "(default: all 5), comma separated")
    imp.add_argument("--span-rule", choices=["any", "majority", "all"], default="any",
                     help="pa-hmdb51: a value is positive if present in any span, most frames, or all frames")
    imp.add_argument("--include-unannotated", action="store_true",
                     help="pa-hmdb51: keep the other HMDB51 videos as action-only rows")
    imp.add_argument("--reviewed-only", action="store_true", help="pa-hmdb51: skip annotations not marked reviewed")
    imp.set_defaults(func=cmd_data_import)

    merge = data.add_parser("merge", help="join manifests (say UCF101 actions and VISPR attributes) into one")
    merge.add_argument("manifests", nargs="+")
    merge.add_argument("--out", required=True, help="merged manifest CSV (at or above every media root)")
    merge.set_defaults(func=cmd_data_merge)

    check = data.add_parser("check", help="validate a manifest and look for missing files")
    check.add_argument("manifest")
    check.set_defaults(func=cmd_data_check)

    features = sub.add_parser("features", help="the frozen-encoder feature cache").add_subparsers(
        dest="features_command", required=True
    )
    extract = features.add_parser("extract", help="encode every clip once into the cache")
    extract.add_argument("--config", help="extraction YAML (paths relative to it)")
    extract.add_argument("--manifest")
    extract.add_argument("--encoder", help="registry name or module:factory")
    extract.add_argument("--encoder-option", type=_parse_option, action="append", metavar="KEY=VALUE")
    extract.add_argument("--cache-root")
    extract.add_argument("--workers", type=int, help="decode worker processes")
    extract.add_argument("--strict", action="store_true", help="a video that fails to decode is fatal")
    extract.add_argument("--quiet", action="store_true")
    extract.set_defaults(func=cmd_features_extract)

    info = features.add_parser("info", help="show what a cache holds")
    info.add_argument("cache")
    info.add_argument("--json", action="store_true")
    info.add_argument("--verify", action="store_true", help="re-hash the data files against meta.json")
    info.set_defaults(func=cmd_features_info)

    train = sub.add_parser("train", help="run one AAM trial (directly or under accelerate launch)")
    train.add_argument("--config", required=True, help="trial YAML")
    train.add_argument("--out", required=True, help="trial folder for trial.json, metrics.jsonl, ...")
    train.set_defaults(func=cmd_train)
    stack = sub.add_parser("train-stack", help="run K stackable trials as one vmapped model in one process")
    stack.add_argument("--config", required=True, action="append", help="trial YAML (once per member)")
    stack.add_argument("--out", required=True, action="append", help="trial folder (once per member, in order)")
    stack.set_defaults(func=cmd_train_stack)

    add_study_commands(sub)
    add_tracking_commands(sub)

    demo = sub.add_parser("demo", help="run the main job on embedded defaults (synthetic dataset)")
    demo.add_argument("--workdir", default="work/demo")
    demo.add_argument("--videos", type=int, default=240)
    demo.add_argument("--trials", type=int, default=12)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except AamSearchError as error:  # bad input: its message, not a traceback
        errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True, markup=True)
        return 2
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/]")
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
