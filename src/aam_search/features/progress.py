"""A rich progress bar for extraction: videos done, clips/s, and skipped videos as they happen."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ExtractionProgress:
    def __init__(self, *, enabled: bool, total_videos: int, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.clips = 0
        self.started = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]extracting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("videos"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("extract", total=total_videos, rate="")

    def __enter__(self) -> ExtractionProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def advance(self, *, clips: int) -> None:
        self.clips += clips
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self._progress.update(self._task, advance=1, rate=f"{self.clips / elapsed:,.1f} clips/s")

    def skip(self, problem: dict[str, Any]) -> None:
        self._progress.update(self._task, advance=1)
        if self.enabled:
            self.console.print(f"[yellow]skipped[/] row {problem['row']} {problem['path']}: {problem['reason']}")
