"""One manifest from several: action videos and privacy images side by side (UCF101 + VISPR).

The paper pairs an action dataset (utility) with a privacy image set (attributes as static
clips). Each importer writes its own manifest; `merge_manifests` joins them: the columns are
the union, and a row leaves the columns of the other datasets empty ("not labelled").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from aam_search.data.manifest import ManifestError, read_manifest, write_manifest


def merge_manifests(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out`` with every row of ``sources``; paths are re-based onto ``out``'s folder."""
    if len(sources) < 2:
        raise ManifestError("give at least two manifests to merge")
    out_file = Path(out).absolute()
    out_dir = Path(os.path.normpath(out_file.parent))
    rows: list[dict[str, object]] = []
    columns: list[str] = ["path", "split", "action"]
    first_seen: dict[Path, str] = {}
    for source in sources:
        manifest = read_manifest(source)
        columns += [f"{prefix}{name}" for prefix, names in
                    (("attr:", manifest.attr_names), ("task:", manifest.task_names), ("group:", manifest.group_names))
                    for name in names if f"{prefix}{name}" not in columns]
        for row in manifest.rows:
            where = f"{manifest.file}, row {row.row}"
            absolute = Path(os.path.normpath(row.path))
            if not absolute.is_relative_to(out_dir):
                raise ManifestError(f"{row.rel_path} lies outside the merged manifest's folder {out_dir}", manifest.file, row.row)
            if absolute in first_seen:
                raise ManifestError(f"{row.rel_path} is also listed in {first_seen[absolute]}", manifest.file, row.row)
            first_seen[absolute] = where
            rows.append({
                "path": os.path.relpath(absolute, out_dir), "split": row.split, "action": row.action,
                **{f"attr:{k}": v for k, v in row.attrs.items()},
                **{f"task:{k}": v for k, v in row.tasks.items()},
                **{f"group:{k}": v for k, v in row.groups.items()},
            })
    return write_manifest(out_file, rows, columns)
