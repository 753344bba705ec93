"""Turn public datasets' own annotation files into a manifest (see `manifest.py`).

Every importer writes the manifest with paths relative to its folder, never drops an
entry silently (skipped ones are listed in the returned `ImportReport` with a reason),
and names the annotation file and line of anything it cannot parse.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aam_search.data.import_common import (
    FILE_NOT_FOUND,
    ImportFormatError,
    ImportReport,
    SkippedEntry,
    checked_out_dir,
    manifest_row,
    write_grouped,
    write_report,
)

# The 7 VISPR attributes used by SPAct and by the paper's privacy evaluation.
VISPR_PAPER_ATTRIBUTES = (
    "a17_color",
    "a4_gender",
    "a9_face_complete",
    "a10_face_partial",
    "a12_semi_nudity",
    "a64_rel_personal",
    "a65_rel_soc",
)
VISPR_SPLIT_FOLDERS = {"train2017": "train", "val2017": "val", "test2017": "test"}
KINETICS_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")  # preference order when several exist
KINETICS_SPLITS = {"train": "train", "val": "val", "validate": "val", "test": "test"}
UCF101_GROUP = re.compile(r"_g(\d+)_c\d+")


def import_ucf101(
    videos_root: str | Path,
    splits_dir: str | Path,
    out: str | Path,
    split: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImportReport:
    """UCF101 from ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``.

    Validation clips are whole actor groups (the ``gXX`` in file names) taken out of train,
    so clips of one group never straddle train and val.
    """
    videos_root, splits_dir = Path(videos_root), Path(splits_dir)
    out_dir = checked_out_dir(out, videos_root)
    class_index = _read_ucf101_classes(splits_dir / "classInd.txt")
    skipped: list[SkippedEntry] = []
    train: list[tuple[str, Path, str]] = []  # (action, file, group)
    test: list[tuple[str, Path]] = []
    for list_name, is_train in ((f"trainlist0{split}.txt", True), (f"testlist0{split}.txt", False)):
        list_file = splits_dir / list_name
        for number, fields in _numbered_fields(list_file):
            source = f"{list_file}:{number}"
            if len(fields) not in (1, 2):
                raise ImportFormatError(f"{source}: expected '<class>/<video> [label]', got {' '.join(fields)!r}")
            rel_video = fields[0]
            action = rel_video.split("/")[0]
            if action not in class_index.values():
                raise ImportFormatError(f"{source}: class {action!r} is not in classInd.txt")
            if len(fields) == 2 and class_index.get(fields[1]) != action:
                raise ImportFormatError(f"{source}: label {fields[1]} does not match the folder {action!r}")
            group = UCF101_GROUP.search(rel_video)
            if group is None:
                raise ImportFormatError(f"{source}: no group '_gXX_cYY' in the file name {rel_video!r}")
            # Some copies of UCF101 keep every video in one flat folder.
            video = _first_file(videos_root / rel_video, videos_root / Path(rel_video).name)
            if video is None:
                skipped.append(SkippedEntry(f"{source}: {rel_video}", FILE_NOT_FOUND))
            elif is_train:
                train.append((action, video, group.group(1)))
            else:
                test.append((action, video))

    return write_grouped(out, out_dir, train, test, skipped, val_fraction, seed)


def import_hmdb51(
    videos_root: str | Path,
    splits_dir: str | Path,
    out: str | Path,
    split: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImportReport:
    """HMDB51 from ``<class>_test_split{N}.txt`` (1 = train, 2 = test, 0 = unused in this split).

    Validation clips are taken out of train by source movie (the name before ``_<class>_``),
    since HMDB51 cuts several clips from one movie scene.
    """
    videos_root = Path(videos_root)
    out_dir = checked_out_dir(out, videos_root)
    skipped: list[SkippedEntry] = []
    train: list[tuple[str, Path, tuple[str, str]]] = []  # (action, file, (action, source movie))
    test: list[tuple[str, Path]] = []
    for entry in read_hmdb51_split(splits_dir, split):
        if entry.usage == "0":
            skipped.append(SkippedEntry(entry.source, f"unused in split {split}"))
            continue
        video = videos_root / entry.action / entry.name
        if not video.is_file():
            skipped.append(SkippedEntry(entry.source, FILE_NOT_FOUND))
        elif entry.usage == "1":
            train.append((entry.action, video, entry.group))
        else:
            test.append((entry.action, video))

    return write_grouped(out, out_dir, train, test, skipped, val_fraction, seed)


@dataclass(frozen=True)
class HMDB51Entry:
    """One line of an HMDB51 split file."""

    source: str  # "<split file>:<line>: <video name>"
    action: str
    name: str
    usage: str  # "1" train, "2" test, "0" unused in this split

    @property
    def group(self) -> tuple[str, str]:
        """(action, source movie): clips cut from one movie scene stay on one side of train/val."""
        return self.action, self.name.rsplit(f"_{self.action}_", 1)[0]


def read_hmdb51_split(splits_dir: str | Path, split: int = 1) -> list[HMDB51Entry]:
    """Every line of the ``<class>_test_split{N}.txt`` files, in file then line order."""
    splits_dir = Path(splits_dir)
    suffix = f"_test_split{split}.txt"
    split_files = sorted(splits_dir.glob(f"*{suffix}"))
    if not split_files:
        raise ImportFormatError(f"{splits_dir}: no '*{suffix}' files")
    entries: list[HMDB51Entry] = []
    for split_file in split_files:
        action = split_file.name[: -len(suffix)]
        for number, fields in _numbered_fields(split_file):
            source = f"{split_file}:{number}"
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ImportFormatError(f"{source}: expected '<video name> <0|1|2>', got {' '.join(fields)!r}")
            entries.append(HMDB51Entry(f"{source}: {fields[0]}", action, fields[0], fields[1]))
    return entries


def import_kinetics(
    videos_root: str | Path,
    annotations_csv: str | Path | Sequence[str | Path],
    out: str | Path,
) -> ImportReport:
    """Kinetics from its CSV files (``label,youtube_id,time_start,time_end,split``).

    Pass one CSV or several (Kinetics ships train/validate/test separately). Videos are found
    anywhere under `videos_root` by the usual ``{youtube_id}_{start:06d}_{end:06d}.mp4`` name.
    Rows without a label (the official test CSV) or without a video are skipped with a reason.
    """
    videos_root = Path(videos_root)
    out_dir = checked_out_dir(out, videos_root)
    csv_files = [Path(annotations_csv)] if isinstance(annotations_csv, (str, Path)) else [
        Path(item) for item in annotations_csv
    ]
    videos = _index_videos(videos_root, KINETICS_VIDEO_SUFFIXES)
    skipped: list[SkippedEntry] = []
    rows: list[dict[str, object]] = []
    first_source: dict[str, str] = {}
    for csv_file in csv_files:
        for number, record in _kinetics_records(csv_file):
            source = f"{csv_file}:{number}"
            try:
                split = KINETICS_SPLITS[record["split"]]
                stem = f"{record['youtube_id']}_{int(float(record['time_start'])):06d}_{int(float(record['time_end'])):06d}"
            except (KeyError, ValueError):
                raise ImportFormatError(
                    f"{source}: bad split or times in {record}; splits: {', '.join(KINETICS_SPLITS)}"
                ) from None
            label = record.get("label") or None
            if stem in first_source:
                skipped.append(SkippedEntry(f"{source}: {stem}", f"duplicate of {first_source[stem]}"))
            elif label is None:
                skipped.append(SkippedEntry(f"{source}: {stem}", "no action label"))
            elif stem not in videos:
                skipped.append(SkippedEntry(f"{source}: {stem}", FILE_NOT_FOUND))
            else:
                rows.append(manifest_row(out_dir, videos[stem], split, label))
            first_source.setdefault(stem, source)
    return write_report(out, rows, skipped)


def import_vispr(
    images_root: str | Path,
    annotations_dir: str | Path,
    out: str | Path,
    attributes: Sequence[str] = VISPR_PAPER_ATTRIBUTES,
) -> ImportReport:
    """VISPR from its per-image JSON files under ``{train2017,val2017,test2017}/``.

    Writes one ``attr:<label>`` column per requested attribute (1 when the image carries the
    label, else 0) and no action; each image becomes a static clip.
    """
    images_root, annotations_dir = Path(images_root), Path(annotations_dir)
    out_dir = checked_out_dir(out, images_root)
    skipped: list[SkippedEntry] = []
    rows: list[dict[str, object]] = []
    positives: Counter[str] = Counter()
    folders_found = 0
    for folder, split in VISPR_SPLIT_FOLDERS.items():
        split_dir = annotations_dir / folder
        if not split_dir.is_dir():
            skipped.append(SkippedEntry(str(split_dir), "split folder not found"))
            continue
        folders_found += 1
        for json_file in sorted(split_dir.glob("*.json")):
            image_id, image_path, labels = _read_vispr_annotation(json_file)
            image = _first_file(images_root / image_path, images_root / folder / f"{image_id}.jpg")
            if image is None:
                skipped.append(SkippedEntry(f"{json_file}: {image_path}", FILE_NOT_FOUND))
                continue
            present = set(labels)
            positives.update(name for name in attributes if name in present)
            row = manifest_row(out_dir, image, split, None)
            row.update({f"attr:{name}": int(name in present) for name in attributes})
            rows.append(row)
    if folders_found == 0:
        raise ImportFormatError(f"{annotations_dir}: none of {', '.join(VISPR_SPLIT_FOLDERS)} exists")
    # An attribute that no image carries is almost surely a misspelt name, and its AP is undefined.
    never_seen = [name for name in attributes if positives[name] == 0]
    if rows and never_seen:
        raise ImportFormatError(
            f"{annotations_dir}: no image carries {', '.join(never_seen)}; labels look like 'a4_gender'"
        )
    columns = ["path", "split", "action", *(f"attr:{name}" for name in attributes)]
    return write_report(out, rows, skipped, columns)


def _numbered_fields(list_file: Path) -> Iterable[tuple[int, list[str]]]:
    """(1-based line number, whitespace-separated fields) of each non-blank line."""
    if not list_file.is_file():
        raise ImportFormatError(f"{list_file}: annotation file not found")
    with list_file.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield number, line.split()


def _read_ucf101_classes(class_file: Path) -> dict[str, str]:
    """classInd.txt as {index: class name}."""
    classes: dict[str, str] = {}
    for number, fields in _numbered_fields(class_file):
        if len(fields) != 2 or not fields[0].isdigit():
            raise ImportFormatError(f"{class_file}:{number}: expected '<index> <class>', got {' '.join(fields)!r}")
        classes[fields[0]] = fields[1]
    if not classes:
        raise ImportFormatError(f"{class_file}: no classes")
    return classes


def _first_file(*candidates: Path) -> Path | None:
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _index_videos(videos_root: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """File stem -> path for every video under `videos_root`; one walk instead of a lookup per row."""
    found = sorted(
        (file for file in videos_root.rglob("*") if file.suffix.lower() in suffixes and file.is_file()),
        key=lambda file: (suffixes.index(file.suffix.lower()), str(file)),
    )
    index: dict[str, Path] = {}
    for file in found:
        index.setdefault(file.stem, file)
    return index


def _kinetics_records(csv_file: Path) -> Iterable[tuple[int, dict[str, str]]]:
    if not csv_file.is_file():
        raise ImportFormatError(f"{csv_file}: annotation file not found")
    with csv_file.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.DictReader(stream)
        required = {"youtube_id", "time_start", "time_end", "split"}
        missing = required - set(reader.fieldnames or ())
        if missing:
            raise ImportFormatError(f"{csv_file}:1: missing columns {', '.join(sorted(missing))}")
        for record in reader:
            yield reader.line_num, {key: (value or "").strip() for key, value in record.items() if key}


def _read_vispr_annotation(json_file: Path) -> tuple[str, str, list[str]]:
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
        image_id, image_path, labels = data["id"], data["image_path"], data["labels"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ImportFormatError(
            f"{json_file}: not a VISPR annotation with 'id', 'image_path' and 'labels' ({error})"
        ) from None
    if not isinstance(labels, list):
        raise ImportFormatError(f"{json_file}: 'labels' is not a list")
    return str(image_id), str(image_path), [str(label) for label in labels]
