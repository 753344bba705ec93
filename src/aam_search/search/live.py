"""What a person watching a study sees: a live rich view on a terminal, log lines elsewhere."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from aam_search.search.callbacks import (
    EpochReported,
    StudyFinished,
    StudyHalted,
    StudyPrepared,
    TrialCompleted,
    TrialFailed,
    TrialPruned,
    TrialStale,
    TrialStarted,
    TunerCallback,
)
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


class StudyView(TunerCallback):
    """The tuner loop's events as log lines, and on a terminal a live table of the running
    trials and the front (read from the study StudyPrepared hands over)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.interactive = self.console.is_terminal
        self.running: dict[int, dict[str, Any]] = {}
        self.counts = {"completed": 0, "failed": 0, "pruned": 0}
        self.pruned: dict[int, int] = {}  # trial number -> the rung it was stopped at
        self.hypervolume = 0.0
        self.live: Live | None = None
        self.study: Any = None
        self.objectives: list[str] = []

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

    def on_study_prepared(self, event: StudyPrepared) -> None:
        self.study, self.objectives = event.study, list(event.objectives)
        base = event.baseline
        self.log(f"raw baseline: utility {base['utility']:.3f}, leakage {base['leakage']:.3f} (cache {event.cache})")
        self._refresh()

    def on_trial_started(self, event: TrialStarted) -> None:
        self.running[event.number] = {"devices": list(event.devices) or "cpu", "epoch": "-", "loss": "-",
                                      "started": time.time()}
        self.log(f"trial {event.number} started on {self.running[event.number]['devices']}: {dict(event.params)}")
        self._refresh()

    def on_epoch_reported(self, event: EpochReported) -> None:
        if event.number in self.running:
            metrics = event.metrics
            self.running[event.number].update(epoch=metrics.get("epoch"), loss=metrics.get("loss"),
                                              l_lc=metrics.get("l_lc"), l_privacy=metrics.get("l_privacy"))
        self._refresh()

    def on_trial_completed(self, event: TrialCompleted) -> None:
        self.running.pop(event.number, None)
        self.counts["completed"] += 1
        self.hypervolume = event.hypervolume
        result = event.result
        removed = finite_number(result.get(ABOVE_CHANCE))
        removed = f", above-chance leakage removed {percent(removed)}" if removed is not None else ""
        self.log(f"trial {event.number} completed: utility {result['utility']:.3f}, leakage "
                 f"{result['leakage']:.3f}{removed}, hypervolume {self.hypervolume:.4f}")
        self._refresh()

    def on_trial_failed(self, event: TrialFailed) -> None:
        self.running.pop(event.number, None)
        self.counts["failed"] += 1
        retry = " (will be re-run)" if event.retried else ""
        self.log(f"[red]trial {event.number} failed[/]: {event.reason}{retry}")
        self._refresh()

    def on_trial_pruned(self, event: TrialPruned) -> None:
        self.running.pop(event.number, None)
        self.counts["pruned"] += 1
        self.pruned[event.number] = event.rung
        values = ", ".join(f"{name} {value:.3f}" for name, value in zip(self.objectives, event.values, strict=False))
        self.log(f"[yellow]trial {event.number} pruned[/] at rung {event.rung} (epoch {event.epoch})"
                 f"{': ' + values if values else ''}: {event.reason}")
        self._refresh()

    def on_trial_stale(self, event: TrialStale) -> None:  # another (or an earlier, dead) worker's trial
        retry = " (will be re-run)" if event.retried else ""
        self.log(f"[yellow]trial {event.number} failed[/]: {event.reason}{retry}")
        self._refresh()

    def on_study_halted(self, event: StudyHalted) -> None:
        self.log(f"[bold red]stopping the study[/]: {event.reason}")
        self._refresh()

    def on_study_finished(self, event: StudyFinished) -> None:
        self._refresh()

    def _refresh(self) -> None:
        if self.live is not None and self.study is not None:
            self.live.update(self._render())

    def _render(self) -> Group:
        status = Table(title="running trials")
        for column in ("trial", "devices", "epoch", "loss", "L_LC", "L_B", "elapsed"):
            status.add_column(column)
        for number, info in sorted(self.running.items()):
            status.add_row(str(number), str(info["devices"]), str(info["epoch"]), _short(info["loss"]),
                           _short(info.get("l_lc", "-")), _short(info.get("l_privacy", "-")),
                           f"{time.time() - info['started']:.0f}s")
        pruned = f", pruned {self.counts['pruned']}" if self.counts["pruned"] else ""
        summary = (f"completed {self.counts['completed']}, failed {self.counts['failed']}{pruned}, "
                   f"hypervolume {self.hypervolume:.4f}")
        trials = self.study.get_trials(deepcopy=False)
        return Group(status, summary, front_table(trials, self.objectives))
