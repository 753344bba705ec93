"""``aam-search promote | anonymize | ui``: the MLflow commands (thin; MLflow is imported late)."""

from __future__ import annotations

import argparse
import subprocess

from rich.console import Console
from rich.table import Table

console = Console()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_promote(args: argparse.Namespace) -> int:
    from aam_search.redact import redact
    from aam_search.tracking.promote import promote

    promotion = promote(
        args.study, storage=args.storage, trial=args.trial, max_utility_drop=args.max_utility_drop,
        knee=args.knee, alias=args.alias, tracking_uri=args.tracking_uri, cache=args.cache,
        say=lambda message: console.print(message, soft_wrap=True, highlight=False, markup=False),
    )
    table = Table("test split (fresh attackers and probes)", "value", title=f"trial {promotion.trial}")
    for key in ("test_utility", "test_raw_utility", "test_utility_drop", "test_leakage", "test_raw_leakage",
                "test_leakage_reduction", "test_combined_score"):
        if key in promotion.test_metrics:
            table.add_row(key.removeprefix("test_"), f"{promotion.test_metrics[key]:.4f}")
    console.print(table)
    console.print(f"promoted trial {promotion.trial} of {promotion.study} as [bold]{promotion.model_name} version "
                  f"{promotion.version}[/] ({promotion.model_uri})", soft_wrap=True)
    console.print(f"use it: aam_search.load_adapter({promotion.model_uri!r}, tracking_uri={redact(promotion.tracking_uri)!r})",
                  soft_wrap=True, highlight=False, markup=False)
    return 0


def cmd_anonymize(args: argparse.Namespace) -> int:
    from aam_search.tracking.adapter import anonymize_file

    report = anonymize_file(args.model, args.input, args.output, tracking_uri=args.tracking_uri,
                            batch_size=args.batch_size)
    console.print(f"anonymized {report['rows']} rows {report['shape']} ({report['dtype']}) -> {report['output']}",
                  soft_wrap=True, highlight=False)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from aam_search.tracking.ui import ui_command

    command, env, url = ui_command(workdir=args.workdir, tracking_uri=args.tracking_uri, host=args.host,
                                   port=args.port)
    console.print(f"MLflow UI at [bold]{url}[/] (Ctrl-C stops it)", highlight=False)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def add_tracking_commands(sub: argparse._SubParsersAction) -> None:
    promote = sub.add_parser("promote", help="test a trial's adapter and register it in the MLflow Model Registry")
    promote.add_argument("study")
    promote.add_argument("--storage", help="the study's storage URL (default: SQLite in work/<study>)")
    rule = promote.add_mutually_exclusive_group()
    rule.add_argument("--trial", type=int, help="promote this (completed) trial")
    rule.add_argument("--max-utility-drop", type=float,
                      help="least leakage among trials whose utility dropped at most this much (default 0.01)")
    rule.add_argument("--knee", action="store_true", help="the front's trial closest to its ideal corner")
    promote.add_argument("--alias", default="champion", help="registry alias moved to the new version")
    promote.add_argument("--tracking-uri", help="MLflow tracking URI (default: $AAM_TRACKING_URI, else the study's)")
    promote.add_argument("--cache", help="the feature cache, if not where the trial found it")
    promote.set_defaults(func=cmd_promote)

    anonymize = sub.add_parser("anonymize", help="apply a promoted adapter to a features file")
    anonymize.add_argument("--model", required=True,
                           help="models:/aam-<study>@champion, models:/NAME/VERSION or an adapter.safetensors")
    anonymize.add_argument("--in", dest="input", required=True,
                           help="safetensors file with a float tensor 'features' [N, L, D]")
    anonymize.add_argument("--out", dest="output", required=True, help="safetensors file to write (same layout)")
    anonymize.add_argument("--tracking-uri", help="MLflow tracking URI of a models:/ URI")
    anonymize.add_argument("--batch-size", type=_positive_int, default=256)
    anonymize.set_defaults(func=cmd_anonymize)

    ui = sub.add_parser("ui", help="the MLflow UI for a work folder's studies")
    where = ui.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="a study's work folder (its mlflow.db)")
    where.add_argument("--tracking-uri", help="a database tracking URI")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    ui.set_defaults(func=cmd_ui)
