"""PA-HMDB51: annotation files in the layout of github.com/VITA-Group/PA-HMDB51 (PrivacyAttributes/<class>.json)."""

import json
from pathlib import Path

import pytest

from aam_search.data.importers import ImportFormatError
from aam_search.data.manifest import read_manifest
from aam_search.data.pa_hmdb51 import attribute_columns, import_pa_hmdb51
from tests.data.test_importers import touch, write_lines


def spans(*triples):
    return [list(triple) for triple in triples]


def record(skin=((0, 99, 1),), face=((0, 99, 2),), gender=((0, 99, 1),), nudity=((0, 99, 0),),
           relationship=((0, 99, 0),), review=True):
    # key order and the review/note fields as in the published files
    return {"skin_color": spans(*skin), "relationship": spans(*relationship), "face": spans(*face),
            "review": review, "nudity": spans(*nudity), "gender": spans(*gender), "note": ""}


def brush(movie: str, clip: int) -> str:
    return f"{movie}_brush_hair_u_nm_np1_ba_goo_{clip}.avi"


def pullup(movie: str, clip: int) -> str:
    return f"{movie}_pullup_f_cm_np1_fr_med_{clip}.avi"


def make_pa(root: Path, missing: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """Two classes; per class 4 annotated train videos of 2 movies, 1 annotated test video,
    1 test video without annotation, 1 annotated video unused in split 1."""
    videos, splits, annotations = root / "hmdb51", root / "testTrainMulti_7030_splits", root / "PrivacyAttributes"
    annotations.mkdir(parents=True)
    for action, name in (("brush_hair", brush), ("pullup", pullup)):
        train = [name(movie, clip) for movie in ("Aussie", "April") for clip in (0, 1)]
        test, plain, unused = name("Beth", 0), name("Plain", 0), name("Unused", 0)
        lines = [f"{video} 1" for video in train] + [f"{test} 2", f"{plain} 2", f"{unused} 0"]
        write_lines(splits / f"{action}_test_split1.txt", lines)
        for video in [*train, test, plain, unused]:
            if video not in missing:
                touch(videos / action / video)
        data = {video: record() for video in [*train, test, unused]}
        (annotations / f"{action}.json").write_text(json.dumps(data, indent=4), encoding="utf-8")
    return videos, annotations, splits


def set_record(annotations: Path, action: str, video: str, value: dict) -> None:
    file = annotations / f"{action}.json"
    data = json.loads(file.read_text())
    data[video] = value
    file.write_text(json.dumps(data, indent=4), encoding="utf-8")


def attrs_of(manifest_path: Path, video: str) -> dict:
    manifest = read_manifest(manifest_path)
    (row,) = [row for row in manifest.rows if row.rel_path.endswith(video)]
    return row.attrs


def test_joins_annotations_with_the_hmdb51_split(tmp_path: Path) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    set_record(annotations, "brush_hair", brush("Beth", 0), record(
        skin=((0, 49, 1), (50, 99, [2, 3])), face=((0, 19, 0), (20, 99, 1)), gender=((0, 99, [1, 2]),),
        nudity=((0, 9, 2), (10, 99, 1)), relationship=((0, 99, 1),)))
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv", val_fraction=0.5, seed=0)

    manifest = read_manifest(report.manifest)
    assert manifest.attr_names == tuple(name.removeprefix("attr:") for name in attribute_columns())
    assert manifest.attr_names == ("skin_color_white", "skin_color_yellow", "skin_color_black", "face_partial",
                                   "face_complete", "gender_male", "gender_female", "nudity_partial",
                                   "nudity_semi", "relationship_identifiable")
    assert report.rows_per_split["test"] == 2 and report.rows_per_split["train"] + report.rows_per_split["val"] == 8
    assert {row.action for row in manifest.rows} == {"brush_hair", "pullup"}
    # val is whole source movies, never one movie on both sides
    for action in ("brush_hair", "pullup"):
        movies = {split: {row.rel_path.split("/")[-1].split("_")[0] for row in manifest.split_rows(split)
                          if row.action == action} for split in ("train", "val")}
        assert movies["train"].isdisjoint(movies["val"])
    # any span counts: several skin colours, both genders, a face that shows up after frame 20
    assert attrs_of(report.manifest, brush("Beth", 0)) == {
        "skin_color_white": 1, "skin_color_yellow": 1, "skin_color_black": 1, "face_partial": 1,
        "face_complete": 0, "gender_male": 1, "gender_female": 1, "nudity_partial": 1, "nudity_semi": 1,
        "relationship_identifiable": 1}
    reasons = sorted(entry.reason for entry in report.skipped)
    assert reasons == ["no PA-HMDB51 annotation"] * 2 + ["unused in split 1"] * 2
    assert "skipped 2: no PA-HMDB51 annotation" in report.summary()


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("any", (1, 1, 1, 1, 1)), ("majority", (1, 0, 0, 0, 1)), ("all", (0, 0, 0, 0, 1))],
)
def test_span_rule_decides_how_frame_spans_become_one_label(tmp_path: Path, rule: str, expected: tuple) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    # face partial in 60 of 100 frames, complete in 40; semi-nudity in 1 frame; relationship in 50
    set_record(annotations, "pullup", pullup("Beth", 0), record(
        face=((0, 59, 1), (60, 99, 2)), nudity=((0, 98, 0), (99, 99, 2)), relationship=((0, 49, 0), (50, 99, 1))))
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv", rule=rule)
    attrs = attrs_of(report.manifest, pullup("Beth", 0))
    got = tuple(attrs[name] for name in ("face_partial", "face_complete", "nudity_semi",
                                         "relationship_identifiable", "skin_color_white"))
    assert got == expected


def test_unlabelled_attribute_leaves_empty_cells_and_code_zero_gives_zeros(tmp_path: Path) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    value = record(gender=((0, 99, 0),))
    del value["nudity"]
    value["relationship"] = []
    set_record(annotations, "pullup", pullup("Beth", 0), value)
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv")
    attrs = attrs_of(report.manifest, pullup("Beth", 0))
    assert attrs["nudity_partial"] is None and attrs["nudity_semi"] is None
    assert attrs["relationship_identifiable"] is None
    assert attrs["gender_male"] == 0 and attrs["gender_female"] == 0
    row_cells = (tmp_path / "pa.csv").read_text().splitlines()
    (line,) = [line for line in row_cells if pullup("Beth", 0) in line]
    assert line.endswith(",,,")  # nudity x2 and relationship: empty, not 0


def test_missing_videos_are_counted_and_skipped(tmp_path: Path) -> None:
    missing = (brush("Aussie", 0), pullup("Beth", 0))
    videos, annotations, splits = make_pa(tmp_path, missing=missing)
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv")
    not_found = [entry for entry in report.skipped if entry.reason == "file not found"]
    assert sorted(entry.source.rsplit(": ", 1)[1] for entry in not_found) == sorted(missing)
    assert all("PrivacyAttributes" in entry.source and ".json:" in entry.source for entry in not_found)
    assert "skipped 2: file not found" in report.summary()
    assert sum(report.rows_per_split.values()) == 10 - 2


def test_annotation_not_in_the_split_files_is_reported(tmp_path: Path) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    set_record(annotations, "pullup", "Stray_pullup_f_cm_np1_fr_med_0.avi", record())
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv")
    (stray,) = [entry for entry in report.skipped if entry.reason == "not in the HMDB51 split files"]
    assert "pullup.json:" in stray.source and stray.source.endswith("Stray_pullup_f_cm_np1_fr_med_0.avi")


def test_include_unannotated_and_reviewed_only(tmp_path: Path) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    set_record(annotations, "pullup", pullup("Beth", 0), record(review=False))
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv", include_unannotated=True,
                              reviewed_only=True)
    attrs = attrs_of(report.manifest, pullup("Plain", 0))
    assert set(attrs.values()) == {None}
    assert [entry.reason for entry in report.skipped].count("annotation not reviewed") == 1
    assert report.rows_per_split["test"] == 3  # two unannotated rows, one reviewed annotated row


def test_attribute_subset(tmp_path: Path) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    report = import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv", attributes=("face", "gender"))
    assert read_manifest(report.manifest).attr_names == ("face_partial", "face_complete", "gender_male",
                                                         "gender_female")
    with pytest.raises(ImportFormatError, match="unknown PA-HMDB51 attribute.*'race'"):
        import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv", attributes=("race",))


def test_unparsable_json_names_file_and_line(tmp_path: Path) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    text = (annotations / "pullup.json").read_text().splitlines()
    text[7] = text[7] + ","  # a trailing comma inside the first span
    (annotations / "pullup.json").write_text("\n".join(text) + "\n")
    with pytest.raises(ImportFormatError, match=r"pullup\.json:\d+: not valid JSON"):
        import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"face": [[0, 99]]}, r"'face' span 1: expected \[start, end, value\]"),
        ({"face": [[0, 99, 7]]}, r"'face' span 1: value 7 is not one of 0 invisible, 1 partial, 2 complete"),
        ({"gender": [[0, 99, 1], [50, 10, 2]]}, r"'gender' span 2: start and end"),
        ({"nudity": "semi"}, r"'nudity' must be a list"),
        ({"race": [[0, 99, 1]]}, r"unknown attribute 'race'"),
    ],
)
def test_bad_annotation_names_file_line_and_video(tmp_path: Path, bad: dict, fragment: str) -> None:
    videos, annotations, splits = make_pa(tmp_path)
    video = pullup("April", 1)
    set_record(annotations, "pullup", video, {**record(), **bad})
    lines = (annotations / "pullup.json").read_text().splitlines()
    line = next(number for number, text in enumerate(lines, start=1) if f'"{video}":' in text)
    with pytest.raises(ImportFormatError, match=rf"pullup\.json:{line}: {video}: {fragment}"):
        import_pa_hmdb51(videos, annotations, splits, tmp_path / "pa.csv")


def test_cli_lists_and_runs_pa_hmdb51(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from aam_search.cli import main

    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    assert "pa-hmdb51" in capsys.readouterr().out
    videos, annotations, splits = make_pa(tmp_path, missing=(brush("Beth", 0),))
    code = main(["data", "import", "pa-hmdb51", "--videos", str(videos), "--annotations", str(annotations),
                 "--splits", str(splits), "--out", str(tmp_path / "pa.csv"), "--span-rule", "majority"])
    out = capsys.readouterr().out
    assert code == 0 and "skipped 1: file not found" in out
    assert read_manifest(tmp_path / "pa.csv").attr_names[0] == "skin_color_white"
    broken = annotations / "brush_hair.json"
    broken.write_text(broken.read_text()[:-5])
    assert main(["data", "import", "pa-hmdb51", "--videos", str(videos), "--annotations", str(annotations),
                 "--splits", str(splits), "--out", str(tmp_path / "pa.csv")]) == 2
    assert "brush_hair.json:" in capsys.readouterr().err


def test_merge_joins_action_videos_and_attribute_images(tmp_path: Path) -> None:
    from aam_search.cli import main
    from aam_search.data.manifest import ManifestError, write_manifest
    from aam_search.data.merge import merge_manifests

    for file in ("ucf/a.avi", "ucf/b.avi", "vispr/1.jpg", "vispr/2.jpg"):
        touch(tmp_path / file)
    actions = write_manifest(tmp_path / "ucf" / "m.csv", [{"path": "a.avi", "split": "train", "action": "run"},
                                                           {"path": "b.avi", "split": "test", "action": "jump"}])
    images = write_manifest(tmp_path / "vispr" / "m.csv", [{"path": "1.jpg", "split": "train", "attr:a4_gender": 1},
                                                            {"path": "2.jpg", "split": "val", "attr:a4_gender": 0}])
    assert main(["data", "merge", str(actions), str(images), "--out", str(tmp_path / "all.csv")]) == 0
    merged = read_manifest(tmp_path / "all.csv")
    by_path = {row.rel_path: row for row in merged.rows}
    assert set(by_path) == {"ucf/a.avi", "ucf/b.avi", "vispr/1.jpg", "vispr/2.jpg"}
    assert by_path["ucf/a.avi"].attrs == {"a4_gender": None} and by_path["ucf/a.avi"].action == "run"
    assert by_path["vispr/1.jpg"].attrs == {"a4_gender": 1} and by_path["vispr/1.jpg"].action is None
    with pytest.raises(ManifestError, match=r"a\.avi is also listed in .*m\.csv, row 2"):
        merge_manifests([actions, actions], tmp_path / "twice.csv")
    with pytest.raises(ManifestError, match="outside the merged manifest's folder"):
        merge_manifests([actions, images], tmp_path / "ucf" / "inside.csv")
