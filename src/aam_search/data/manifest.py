"""The dataset manifest: one CSV listing every video or image, its split and its labels.

Columns (see DESIGN.md, "Data formats"): ``path``, ``split``, ``action``, then any number
of ``attr:<name>`` (0/1 private attributes), ``task:<name>`` (further utility classes) and
``group:<name>`` (bias-protocol groups). An empty cell means "not labelled", so action
videos and privacy-attribute images can share one manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aam_search.errors import AamSearchError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLITS = ("train", "val", "test")
BASE_COLUMNS = ("path", "split", "action")
LABEL_PREFIXES = ("attr:", "task:", "group:")


class ManifestError(AamSearchError, ValueError):
    """A manifest that cannot be used; the message names the file, row and column at fault."""

    def __init__(
        self,
        message: str,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = None if file is None else Path(file)
        self.row = row
        self.column = column
        where = [str(file)] if file is not None else []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class ManifestRow:
    row: int
    rel_path: str
    path: Path
    split: str
    action: str | None
    attrs: dict[str, int | None]
    tasks: dict[str, str | None]
    groups: dict[str, str | None]

    @property
    def is_image(self) -> bool:
        """An image is turned into a static clip instead of being decoded as a video."""
        return self.path.suffix.lower() in IMAGE_SUFFIXES


def sort_classes(labels: Iterable[str]) -> tuple[str, ...]:
    """Distinct labels, in numeric order when all are integers ("2" before "10"), else lexicographic."""
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=lambda label: (int(label), label)))
    except ValueError:
        return tuple(sorted(distinct))


@dataclass(frozen=True)
class Manifest:
    file: Path
    root: Path
    rows: tuple[ManifestRow, ...]
    attr_names: tuple[str, ...]
    task_names: tuple[str, ...]
    group_names: tuple[str, ...]
    action_classes: tuple[str, ...]
    # Hash of the bytes that were parsed, so a file edited after reading cannot change the key.
    content_sha256: str = field(default="", repr=False, compare=False)

    def split_rows(self, split: str) -> list[ManifestRow]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return [row for row in self.rows if row.split == split]

    def task_classes(self, task: str) -> tuple[str, ...]:
        if task not in self.task_names:
            raise KeyError(f"{self.file}: no task {task!r}; tasks: {', '.join(self.task_names) or 'none'}")
        return sort_classes(
            label for row in self.rows if (label := row.tasks[task]) is not None
        )

    def content_hash(self) -> str:
        """sha256 hex of the CSV bytes (part of the feature-cache key)."""
        return self.content_sha256 or hashlib.sha256(self.file.read_bytes()).hexdigest()


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest. Files are not checked for existence (see `missing_files`)."""
    file = Path(path).absolute()
    if not file.is_file():
        raise ManifestError("manifest file not found", file)
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM that spreadsheet programs write
    except UnicodeDecodeError as error:
        raise ManifestError(f"not UTF-8 text ({error})", file) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records = _csv_records(reader, file)
    header = next(records, None)
    if not header or not any(cell.strip() for cell in header):
        raise ManifestError("empty file: expected a header row with at least 'path' and 'split'", file)
    columns = _check_header([cell.strip() for cell in header], file)

    root = file.parent
    resolved_root = root.resolve()
    rows: list[ManifestRow] = []
    first_row_of_path: dict[Path, int] = {}
    for cells in records:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(columns):
            raise ManifestError(f"expected {len(columns)} cells, found {len(cells)}", file, line)
        record = dict(zip(columns, (cell.strip() for cell in cells)))
        manifest_row = _parse_row(record, line, file, root, resolved_root)
        if manifest_row.path in first_row_of_path:
            raise ManifestError(
                f"duplicate path {manifest_row.rel_path!r} (also on row {first_row_of_path[manifest_row.path]})",
                file, line, "path",
            )
        first_row_of_path[manifest_row.path] = line
        rows.append(manifest_row)

    if not rows:
        raise ManifestError("no data rows below the header", file)
    if not any(row.split == "train" for row in rows):
        raise ManifestError("no rows with split 'train'", file, column="split")

    return Manifest(
        file=file,
        root=root,
        rows=tuple(rows),
        attr_names=_names_with_prefix(columns, "attr:"),
        task_names=_names_with_prefix(columns, "task:"),
        group_names=_names_with_prefix(columns, "group:"),
        action_classes=sort_classes(row.action for row in rows if row.action is not None),
        content_sha256=hashlib.sha256(raw).hexdigest(),
    )


def _csv_records(reader: Any, file: Path) -> Iterator[list[str]]:
    """The reader's rows; a CSV it cannot parse (a cell over the csv module's 128 KiB limit,
    a NUL byte) becomes a ManifestError naming the row."""
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ManifestError(f"cannot parse the CSV ({error})", file, reader.line_num) from None
        yield cells


def missing_files(manifest: Manifest) -> list[ManifestRow]:
    """Rows whose file does not exist (decoding reports these per video; this is for a quick check)."""
    return [row for row in manifest.rows if not row.path.is_file()]


def write_manifest(
    path: str | Path,
    rows: Iterable[Mapping[str, object]],
    columns: Sequence[str] | None = None,
) -> Path:
    """Write a manifest CSV and return its absolute path.

    Columns are ``path, split, action`` followed by the ``attr:``, ``task:`` and ``group:``
    columns in the order of `columns` when given, else in order of first appearance in `rows`.
    None (or a missing key) becomes an empty cell; booleans become 0/1.
    """
    file = Path(path).absolute()
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        if column not in BASE_COLUMNS and not _has_label_prefix(column):
            raise ManifestError(f"unknown column {column!r}", file, column=column)
    ordered = list(BASE_COLUMNS) + [
        column for prefix in LABEL_PREFIXES for column in columns if column.startswith(prefix)
    ]
    known = set(ordered)
    file.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a reader never sees a half-written manifest.
    partial = file.with_name(f".{file.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(ordered)
            for line, row in enumerate(rows, start=2):
                unknown = set(row) - known
                if unknown:
                    raise ManifestError(
                        f"columns not in the manifest: {', '.join(sorted(unknown))}", file, line
                    )
                writer.writerow([_format_cell(row.get(column)) for column in ordered])
        os.replace(partial, file)
    finally:
        partial.unlink(missing_ok=True)
    return file


def _format_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _has_label_prefix(column: str) -> bool:
    return any(column.startswith(prefix) and len(column) > len(prefix) for prefix in LABEL_PREFIXES)


def _names_with_prefix(columns: Sequence[str], prefix: str) -> tuple[str, ...]:
    return tuple(column[len(prefix):] for column in columns if column.startswith(prefix))


def _check_header(columns: list[str], file: Path) -> list[str]:
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ManifestError("duplicate column", file, 1, column)
        seen.add(column)
        if column not in BASE_COLUMNS and not _has_label_prefix(column):
            raise ManifestError(
                "unknown column; expected path, split, action, attr:<name>, task:<name> or group:<name>",
                file, 1, column,
            )
    for required in ("path", "split"):
        if required not in seen:
            raise ManifestError("missing required column", file, 1, required)
    if "action" not in seen and not any(column.startswith("attr:") for column in columns):
        raise ManifestError(
            "missing column: a manifest needs an 'action' column or at least one 'attr:' column",
            file, 1, "action",
        )
    return columns


def _parse_row(
    record: dict[str, str], line: int, file: Path, root: Path, resolved_root: Path
) -> ManifestRow:
    rel_path = record["path"]
    if not rel_path:
        raise ManifestError("empty path", file, line, "path")
    if Path(rel_path).is_absolute():
        raise ManifestError(f"absolute path {rel_path!r}; paths must be relative to the manifest's folder",
                            file, line, "path")
    # Checked lexically: `..` may not climb out, but a symlink the user placed inside the
    # dataset folder (say `videos -> /mnt/shared/videos`) is a deliberate choice and allowed.
    resolved = Path(os.path.normpath(root.absolute() / rel_path))
    if not resolved.is_relative_to(root.absolute()):
        raise ManifestError(f"path {rel_path!r} leads outside the manifest's folder {root}",
                            file, line, "path")

    split = record["split"]
    if split not in SPLITS:
        raise ManifestError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}", file, line, "split")

    attrs: dict[str, int | None] = {}
    tasks: dict[str, str | None] = {}
    groups: dict[str, str | None] = {}
    for column, value in record.items():
        if column.startswith("attr:"):
            if value not in ("", "0", "1"):
                raise ManifestError(f"attribute value {value!r} is not 0, 1 or empty", file, line, column)
            attrs[column[len("attr:"):]] = int(value) if value else None
        elif column.startswith("task:"):
            tasks[column[len("task:"):]] = value or None
        elif column.startswith("group:"):
            groups[column[len("group:"):]] = value or None

    action = record.get("action") or None
    if action is None and all(value is None for value in attrs.values()):
        raise ManifestError("row has neither an action nor any attr: label", file, line, "action")
    return ManifestRow(
        row=line, rel_path=rel_path, path=resolved, split=split,
        action=action, attrs=attrs, tasks=tasks, groups=groups,
    )
