"""PA-HMDB51: HMDB51 videos with privacy attributes annotated over frame spans.

The annotations are the ``PrivacyAttributes/<class>.json`` files of
https://github.com/VITA-Group/PA-HMDB51, one per HMDB51 action class::

    {"<video>.avi": {"skin_color": [[start, end, value], ...], "gender": [...], "face": [...],
                     "nudity": [...], "relationship": [...], "review": true, "note": ""}}

A span ``[start, end, value]`` covers frames ``start..end`` (inclusive); ``value`` is an
integer code or a list of codes (several people: ``[1, 2]`` is male and female). The
codes are the ones of the dataset's own GUI (``GUI/Reviewer.py``), see `ATTRIBUTE_VALUES`.

Manifest columns (the rule, see also the README): every attribute value other than the
"not visible / not identifiable" code 0 becomes one binary column ``attr:<attribute>_<value>``,
e.g. ``attr:skin_color_white``, ``attr:gender_female``, ``attr:face_complete``. Code 0 sets
every column of that attribute to 0: nothing is there to leak. An attribute that a video's
annotation lacks (or whose span list is empty) leaves its columns empty: not labelled.

Spans are turned into one label per video by a `SpanRule`:

- ``any`` (default): 1 when the value is present in any labelled span; the privacy worst
  case, since one frame is enough to leak it;
- ``majority``: 1 when it is present in more than half of the labelled frames;
- ``all``: 1 when it is present in every labelled frame.

Actions and train/test come from HMDB51's split files (read by `importers.read_hmdb51_split`);
validation is carved out of train by source movie, as for HMDB51.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from aam_search.data.import_common import (
    FILE_NOT_FOUND,
    ImportFormatError,
    ImportReport,
    SkippedEntry,
    checked_out_dir,
    write_grouped,
)
from aam_search.data.importers import read_hmdb51_split

# code -> name of each attribute's values; code 0 ("not visible / not identifiable") gets no column
ATTRIBUTE_VALUES: dict[str, dict[int, str]] = {
    "skin_color": {0: "unidentifiable", 1: "white", 2: "yellow", 3: "black"},
    "face": {0: "invisible", 1: "partial", 2: "complete"},
    "gender": {0: "unidentifiable", 1: "male", 2: "female"},
    "nudity": {0: "none", 1: "partial", 2: "semi"},
    "relationship": {0: "unidentifiable", 1: "identifiable"},
}
PA_ATTRIBUTES = tuple(ATTRIBUTE_VALUES)
NOT_ANNOTATION_KEYS = frozenset({"review", "note"})
NOT_ANNOTATED = "no PA-HMDB51 annotation"
NOT_IN_SPLITS = "not in the HMDB51 split files"
NOT_REVIEWED = "annotation not reviewed"


class SpanRule(str, Enum):
    ANY = "any"
    MAJORITY = "majority"
    ALL = "all"


def attribute_columns(attributes: Sequence[str] = PA_ATTRIBUTES) -> list[str]:
    """The manifest's ``attr:`` columns for these PA-HMDB51 attributes, in a fixed order."""
    return [
        f"attr:{attribute}_{name}"
        for attribute in attributes
        for code, name in ATTRIBUTE_VALUES[attribute].items()
        if code != 0
    ]


@dataclass(frozen=True)
class VideoAnnotation:
    source: str  # "<json file>:<line>: <video>"
    action: str
    name: str
    reviewed: bool
    # attribute -> [(frames, set of value codes)]; an attribute missing here is unlabelled
    spans: dict[str, list[tuple[int, frozenset[int]]]]


def import_pa_hmdb51(
    videos_root: str | Path,
    annotations_dir: str | Path,
    splits_dir: str | Path,
    out: str | Path,
    split: int = 1,
    rule: SpanRule | str = SpanRule.ANY,
    attributes: Sequence[str] = PA_ATTRIBUTES,
    include_unannotated: bool = False,
    reviewed_only: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImportReport:
    """A manifest of the PA-HMDB51 videos: HMDB51 action and split, PA attributes per video.

    ``include_unannotated`` keeps the other HMDB51 videos too, as action-only rows with empty
    ``attr:`` cells. Videos named in the annotations but absent on disk or from the split
    files are skipped and counted in the report, never dropped silently.
    """
    rule = _span_rule(rule)
    unknown = [name for name in attributes if name not in ATTRIBUTE_VALUES]
    if unknown or not attributes:
        raise ImportFormatError(f"unknown PA-HMDB51 attribute(s) {unknown}; known: {', '.join(PA_ATTRIBUTES)}")
    videos_root = Path(videos_root)
    out_dir = checked_out_dir(out, videos_root)
    annotations = read_pa_annotations(annotations_dir)
    skipped: list[SkippedEntry] = []
    train: list[tuple[str, Path, tuple[str, str]]] = []
    test: list[tuple[str, Path]] = []
    labels: dict[Path, dict[str, object]] = {}
    seen: set[tuple[str, str]] = set()
    for entry in read_hmdb51_split(splits_dir, split):
        annotation = annotations.get((entry.action, entry.name))
        seen.add((entry.action, entry.name))
        if annotation is None and not include_unannotated:
            skipped.append(SkippedEntry(entry.source, NOT_ANNOTATED))
            continue
        if annotation is not None and reviewed_only and not annotation.reviewed:
            skipped.append(SkippedEntry(annotation.source, NOT_REVIEWED))
            continue
        if entry.usage == "0":
            skipped.append(SkippedEntry(entry.source, f"unused in split {split}"))
            continue
        video = videos_root / entry.action / entry.name
        if not video.is_file():
            skipped.append(SkippedEntry(annotation.source if annotation else entry.source, FILE_NOT_FOUND))
            continue
        labels[video] = video_labels(annotation, attributes, rule) if annotation else {}
        if entry.usage == "1":
            train.append((entry.action, video, entry.group))
        else:
            test.append((entry.action, video))
    for key, annotation in annotations.items():
        if key not in seen:
            skipped.append(SkippedEntry(annotation.source, NOT_IN_SPLITS))
    columns = ["path", "split", "action", *attribute_columns(attributes)]
    return write_grouped(
        out, out_dir, train, test, skipped, val_fraction, seed, labels=labels.__getitem__, columns=columns
    )


def video_labels(annotation: VideoAnnotation, attributes: Sequence[str], rule: SpanRule) -> dict[str, object]:
    """One 0/1 cell per attribute value (None where the attribute is not labelled)."""
    cells: dict[str, object] = {}
    for attribute in attributes:
        spans = annotation.spans.get(attribute)
        total = sum(frames for frames, _ in spans) if spans else 0
        for code, name in ATTRIBUTE_VALUES[attribute].items():
            if code == 0:
                continue
            column = f"attr:{attribute}_{name}"
            if not spans:
                cells[column] = None
                continue
            present = sum(frames for frames, codes in spans if code in codes)
            if rule is SpanRule.ANY:
                positive = present > 0
            elif rule is SpanRule.MAJORITY:
                positive = 2 * present > total
            else:
                positive = present == total
            cells[column] = int(positive)
    return cells


def read_pa_annotations(annotations_dir: str | Path) -> dict[tuple[str, str], VideoAnnotation]:
    """Every ``<class>.json`` of the annotations folder as {(action, video name): annotation}."""
    annotations_dir = Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise ImportFormatError(f"{annotations_dir}: PA-HMDB51 annotations folder not found")
    files = sorted(annotations_dir.glob("*.json"))
    if not files:
        raise ImportFormatError(f"{annotations_dir}: no '<class>.json' PA-HMDB51 annotation files")
    annotations: dict[tuple[str, str], VideoAnnotation] = {}
    for file in files:
        for annotation in _read_class_file(file):
            annotations[(annotation.action, annotation.name)] = annotation
    return annotations


def _read_class_file(file: Path) -> Iterable[VideoAnnotation]:
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as error:
        raise ImportFormatError(f"{file}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise ImportFormatError(f"{file}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(data, dict):
        raise ImportFormatError(f"{file}:1: expected an object of videos, got {type(data).__name__}")
    action = file.stem
    for name, record in data.items():
        source = f"{file}:{_line_of_key(text, name)}: {name}"
        if not isinstance(record, dict):
            raise ImportFormatError(f"{source}: expected an object of attributes, got {type(record).__name__}")
        spans: dict[str, list[tuple[int, frozenset[int]]]] = {}
        for attribute, value in record.items():
            if attribute in NOT_ANNOTATION_KEYS:
                continue
            if attribute not in ATTRIBUTE_VALUES:
                raise ImportFormatError(
                    f"{source}: unknown attribute {attribute!r}; known: {', '.join(PA_ATTRIBUTES)}"
                )
            parsed = [_parse_span(source, attribute, index, span) for index, span in enumerate(_as_list(source, attribute, value))]
            if parsed:
                spans[attribute] = parsed
        yield VideoAnnotation(source, action, name, bool(record.get("review", False)), spans)


def _as_list(source: str, attribute: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise ImportFormatError(f"{source}: {attribute!r} must be a list of [start, end, value] spans")
    return value


def _parse_span(source: str, attribute: str, index: int, span: object) -> tuple[int, frozenset[int]]:
    where = f"{source}: {attribute!r} span {index + 1}"
    if not (isinstance(span, list) and len(span) == 3):
        raise ImportFormatError(f"{where}: expected [start, end, value], got {span!r}")
    start, end, value = span
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start <= end:
        raise ImportFormatError(f"{where}: start and end must be frame numbers with start <= end, got {span!r}")
    codes = value if isinstance(value, list) else [value]
    known = ATTRIBUTE_VALUES[attribute]
    if not codes or any(isinstance(code, bool) or code not in known for code in codes):
        allowed = ", ".join(f"{code} {name}" for code, name in known.items())
        raise ImportFormatError(f"{where}: value {value!r} is not one of {allowed} (or a list of them)")
    return end - start + 1, frozenset(codes)


def _line_of_key(text: str, key: str) -> int:
    """1-based line where ``"key":`` first appears (1 when it cannot be found)."""
    match = re.search(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:", text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _span_rule(rule: SpanRule | str) -> SpanRule:
    try:
        return SpanRule(rule)
    except ValueError:
        raise ImportFormatError(
            f"unknown span rule {rule!r}; choose one of {', '.join(r.value for r in SpanRule)}"
        ) from None
