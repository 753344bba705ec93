"""What every importer shares: the report of what was written and skipped, the error that
names an annotation file and line, and the writers that keep manifest paths inside its folder."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aam_search.data.manifest import SPLITS, write_manifest
from aam_search.errors import AamSearchError

FILE_NOT_FOUND = "file not found"
GroupKey = TypeVar("GroupKey", bound=Hashable)


class ImportFormatError(AamSearchError, ValueError):
    """Annotation files that cannot be turned into a manifest; names the file (and line)."""


@dataclass(frozen=True)
class SkippedEntry:
    source: str  # where the entry came from: annotation file, line and the entry itself
    reason: str

    def __str__(self) -> str:
        return f"{self.source} ({self.reason})"


@dataclass
class ImportReport:
    manifest: Path
    rows_per_split: dict[str, int]
    skipped: list[SkippedEntry] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal: rows per split, then skipped entries counted by reason."""
        written = ", ".join(f"{split} {count}" for split, count in self.rows_per_split.items())
        lines = [f"wrote {self.manifest}: {written}"]
        for reason, count in Counter(entry.reason for entry in self.skipped).most_common():
            lines.append(f"skipped {count}: {reason}")
        return "\n".join(lines)


def checked_out_dir(out: str | Path, data_root: Path) -> Path:
    """The manifest's folder, which must hold the data: manifest paths are relative and may not climb out."""
    out_dir = Path(os.path.normpath(Path(out).absolute().parent))
    resolved_root = Path(os.path.normpath(data_root.absolute()))
    if not resolved_root.is_dir():
        raise ImportFormatError(f"data folder {data_root} does not exist")
    if not resolved_root.is_relative_to(out_dir):
        raise ImportFormatError(
            f"the data in {resolved_root} is not inside the manifest's folder {out_dir}; "
            "put the manifest at or above the videos root"
        )
    return out_dir


def manifest_row(out_dir: Path, file: Path, split: str, action: str | None) -> dict[str, object]:
    resolved = Path(os.path.normpath(file.absolute()))  # lexical: symlinked storage is fine
    if not resolved.is_relative_to(out_dir):
        raise ImportFormatError(
            f"{file} lies outside the manifest's folder {out_dir}; "
            "put the manifest at or above the videos root"
        )
    return {"path": os.path.relpath(resolved, out_dir), "split": split, "action": action}


def write_report(
    out: str | Path,
    rows: list[dict[str, object]],
    skipped: list[SkippedEntry],
    columns: Sequence[str] | None = None,
) -> ImportReport:
    rows.sort(key=lambda row: (SPLITS.index(str(row["split"])), str(row["path"])))
    manifest = write_manifest(out, rows, columns)
    counts = Counter(str(row["split"]) for row in rows)
    return ImportReport(manifest, {split: counts[split] for split in SPLITS}, skipped)


def write_grouped(
    out: str | Path,
    out_dir: Path,
    train: list[tuple[str, Path, GroupKey]],
    test: list[tuple[str, Path]],
    skipped: list[SkippedEntry],
    val_fraction: float,
    seed: int,
    labels: Callable[[Path], dict[str, object]] | None = None,
    columns: Sequence[str] | None = None,
) -> ImportReport:
    """Write a manifest whose val split is whole groups of train (no group on both sides).

    ``labels(video)`` adds further cells (``attr:`` columns...) to a video's row.
    """
    val_groups = pick_val_groups({group for _, _, group in train}, val_fraction, seed)
    extra = labels or (lambda _video: {})
    rows = [
        {**manifest_row(out_dir, video, "val" if group in val_groups else "train", action), **extra(video)}
        for action, video, group in train
    ] + [{**manifest_row(out_dir, video, "test", action), **extra(video)} for action, video in test]
    return write_report(out, rows, skipped, columns)


def pick_val_groups(groups: Iterable[GroupKey], val_fraction: float, seed: int) -> set[GroupKey]:
    """A seeded choice of round(val_fraction * n) groups, always leaving at least one for train."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(groups, key=repr)  # set order varies between runs; the choice must not
    if val_fraction == 0 or len(ordered) < 2:
        return set()
    count = min(max(round(val_fraction * len(ordered)), 1), len(ordered) - 1)
    return set(random.Random(seed).sample(ordered, count))
