"""What a person watching a study sees: a live rich view on a terminal, log lines elsewhere."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from aam_search.search.pareto import front_summaries
from aam_search.search.record import ABOVE_CHANCE
from aam_search.search.shown import percent, with_interval
from aam_search.trainer.reporter import finite_number


def front_table(trials: list, objectives: list[str], title: str = "Pareto front") -> Table:
    table = Table(title=title)
    for column in ("trial", *objectives, "leak red.", "above chance", "util drop", "params"):
        table.add_column(column, justify="right" if column != "params" else "left")
    for trial in front_summaries(trials, objectives):
        shown_params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in sorted(trial.params.items()))
        table.add_row(
            str(trial.number),
            *(with_interval(v, trial.interval(name)) for name, v in zip(objectives, trial.values, strict=False)),
            percent(trial.leakage_reduction),
            percent(trial.above_chance),
            percent(trial.utility_drop),
            shown_params,
        )
    return table


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class StudyView:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.interactive = self.console.is_terminal
        self.running: dict[int, dict[str, Any]] = {}
        self.counts = {"completed": 0, "failed": 0}
        self.hypervolume = 0.0
        self.live: Live | None = None

    def __enter__(self) -> StudyView:
        if self.interactive:
            self.live = Live(console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def log(self, message: str) -> None:
        self.console.print(message, soft_wrap=True, highlight=False)

    def handle(self, event: str, payload: dict[str, Any], orchestrator: Any) -> None:
        number = payload.get("number")
        if event == "prepared":
            base = payload["baseline"]
            self.log(f"raw baseline: utility {base['utility']:.3f}, leakage {base['leakage']:.3f} "
                     f"(cache {payload['cache']})")
        elif event == "started":
            self.running[number] = {"devices": payload["devices"] or "cpu", "epoch": "-", "loss": "-",
                                    "started": time.time()}
            self.log(f"trial {number} started on {self.running[number]['devices']}: {payload['params']}")
        elif event == "epoch" and number in self.running:
            metrics = payload["metrics"]
            self.running[number].update(epoch=metrics.get("epoch"), loss=metrics.get("loss"),
                                        l_lc=metrics.get("l_lc"), l_privacy=metrics.get("l_privacy"))
        elif event == "completed":
            self.running.pop(number, None)
            self.counts["completed"] += 1
            self.hypervolume = payload["hypervolume"]
            result = payload["result"]
            removed = finite_number(result.get(ABOVE_CHANCE))
            removed = f", above-chance leakage removed {percent(removed)}" if removed is not None else ""
            self.log(f"trial {number} completed: utility {result['utility']:.3f}, leakage "
                     f"{result['leakage']:.3f}{removed}, hypervolume {self.hypervolume:.4f}")
        elif event == "failed":
            self.running.pop(number, None)
            self.counts["failed"] += 1
            retry = " (will be re-run)" if payload["retried"] else ""
            self.log(f"[red]trial {number} failed[/]: {payload['reason']}{retry}")
        elif event == "stale":  # another (or an earlier, dead) worker's trial that nobody beats for
            retry = " (will be re-run)" if payload["retried"] else ""
            self.log(f"[yellow]trial {number} failed[/]: {payload['reason']}{retry}")
        elif event == "halted":
            self.log(f"[bold red]stopping the study[/]: {payload['reason']}")
        if self.live is not None and hasattr(orchestrator, "study"):
            self.live.update(self._render(orchestrator))

    def _render(self, orchestrator: Any) -> Group:
        status = Table(title="running trials")
        for column in ("trial", "devices", "epoch", "loss", "L_LC", "L_B", "elapsed"):
            status.add_column(column)
        for number, info in sorted(self.running.items()):
            status.add_row(str(number), str(info["devices"]), str(info["epoch"]), _short(info["loss"]),
                           _short(info.get("l_lc", "-")), _short(info.get("l_privacy", "-")),
                           f"{time.time() - info['started']:.0f}s")
        summary = (f"completed {self.counts['completed']}, failed {self.counts['failed']}, "
                   f"hypervolume {self.hypervolume:.4f}")
        trials = orchestrator.study.get_trials(deepcopy=False)
        return Group(status, summary, front_table(trials, orchestrator.config.objectives))
