import json
from pathlib import Path

import pytest

from aam_search.data.importers import (
    VISPR_PAPER_ATTRIBUTES,
    ImportFormatError,
    import_hmdb51,
    import_kinetics,
    import_ucf101,
    import_vispr,
)
from aam_search.data.manifest import read_manifest


def touch(file: Path) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.touch()
    return file


def write_lines(file: Path, lines: list[str]) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


# --- UCF101 -----------------------------------------------------------------------------

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball"]


def make_ucf(root: Path, missing: str = "") -> tuple[Path, Path]:
    videos, splits = root / "UCF-101", root / "ucfTrainTestlist"
    write_lines(splits / "classInd.txt", [f"{i} {name}" for i, name in enumerate(UCF_CLASSES, start=1)])
    train, test = [], []
    for label, name in enumerate(UCF_CLASSES, start=1):
        for group in range(1, 21):
            for clip in (1, 2):
                rel = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
                if rel != missing:
                    touch(videos / rel)
                if group <= 5:
                    test.append(rel)
                else:
                    train.append(f"{rel} {label}")
    write_lines(splits / "trainlist01.txt", train)
    write_lines(splits / "testlist01.txt", test)
    return videos, splits


def group_of(rel_path: str) -> str:
    return rel_path.split("_g")[1][:2]


def test_ucf101_carves_val_by_group_and_lists_missing_files(tmp_path: Path) -> None:
    missing = "Basketball/v_Basketball_g07_c01.avi"
    videos, splits = make_ucf(tmp_path, missing=missing)
    report = import_ucf101(videos, splits, tmp_path / "ucf.csv", val_fraction=0.2, seed=3)

    manifest = read_manifest(report.manifest)
    by_split = {split: manifest.split_rows(split) for split in ("train", "val", "test")}
    groups = {split: {group_of(row.rel_path) for row in rows} for split, rows in by_split.items()}
    assert len(groups["val"]) == 3  # round(0.2 * 15 train groups)
    assert groups["train"].isdisjoint(groups["val"])
    assert groups["train"] | groups["val"] == {f"{g:02d}" for g in range(6, 21)}
    assert groups["test"] == {f"{g:02d}" for g in range(1, 6)}
    assert report.rows_per_split == {split: len(rows) for split, rows in by_split.items()}
    assert len(by_split["test"]) == 20 and len(by_split["train"]) + len(by_split["val"]) == 59
    assert set(manifest.action_classes) == set(UCF_CLASSES)
    assert all(row.rel_path.startswith("UCF-101/") for row in manifest.rows)
    assert all(row.action == row.rel_path.split("/")[1] for row in manifest.rows)
    assert [(entry.reason, entry.source.endswith(missing)) for entry in report.skipped] == [
        ("file not found", True)
    ]
    assert "trainlist01.txt:" in report.skipped[0].source
    assert "skipped 1: file not found" in report.summary()
    assert str(report.skipped[0]).endswith(f"{missing} (file not found)")

    again = import_ucf101(videos, splits, tmp_path / "again.csv", val_fraction=0.2, seed=3)
    assert again.manifest.read_bytes() == report.manifest.read_bytes()  # deterministic for a seed
    other_seeds = [
        {group_of(row.rel_path) for row in read_manifest(
            import_ucf101(videos, splits, tmp_path / f"s{seed}.csv", val_fraction=0.2, seed=seed).manifest
        ).split_rows("val")}
        for seed in range(4, 8)
    ]
    assert any(groups_ != groups["val"] for groups_ in other_seeds)


def test_ucf101_errors_name_file_and_line(tmp_path: Path) -> None:
    videos, splits = make_ucf(tmp_path)
    train_list = splits / "trainlist01.txt"
    lines = train_list.read_text().splitlines()
    lines[2] = lines[2].replace(" 1", " 2")  # label of the other class
    write_lines(train_list, lines)
    with pytest.raises(ImportFormatError, match=r"trainlist01\.txt:3: label 2"):
        import_ucf101(videos, splits, tmp_path / "ucf.csv")

    (splits / "classInd.txt").unlink()
    with pytest.raises(ImportFormatError, match=r"classInd\.txt: annotation file not found"):
        import_ucf101(videos, splits, tmp_path / "ucf.csv")
    write_lines(splits / "classInd.txt", ["1 ApplyEyeMakeup", "Basketball"])
    with pytest.raises(ImportFormatError, match=r"classInd\.txt:2:"):
        import_ucf101(videos, splits, tmp_path / "ucf.csv")


def test_manifest_outside_the_videos_tree_is_refused(tmp_path: Path) -> None:
    videos, splits = make_ucf(tmp_path / "data")
    with pytest.raises(ImportFormatError, match="at or above the videos root"):
        import_ucf101(videos, splits, tmp_path / "manifests" / "ucf.csv")


# --- HMDB51 -----------------------------------------------------------------------------


def test_hmdb51_reads_split_ids_and_keeps_movies_together(tmp_path: Path) -> None:
    videos, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    for action in ("brush_hair", "ride_bike"):
        lines = []
        for movie in range(8):
            for clip in range(2):
                name = f"Movie_{movie}_{action}_u_nm_np1_fr_goo_{clip}.avi"
                touch(videos / action / name)
                lines.append(f"{name} {1 if movie < 6 else 2} ")  # the real files end lines with a space
        touch(videos / action / f"Spare_{action}_f_nm_np1_le_bad_0.avi")
        lines.append(f"Spare_{action}_f_nm_np1_le_bad_0.avi 0")
        lines.append(f"Gone_{action}_f_nm_np1_le_bad_0.avi 1")
        write_lines(splits / f"{action}_test_split1.txt", lines)
        write_lines(splits / f"{action}_test_split2.txt", ["unrelated.avi 1"])

    report = import_hmdb51(videos, splits, tmp_path / "hmdb.csv", split=1, val_fraction=0.25, seed=0)

    manifest = read_manifest(report.manifest)
    assert report.rows_per_split == {"train": 18, "val": 6, "test": 8}
    assert manifest.action_classes == ("brush_hair", "ride_bike")
    movie_splits: dict[tuple[str, str], set[str]] = {}
    for row in manifest.rows:
        movie = row.path.name.rsplit(f"_{row.action}_", 1)[0]
        movie_splits.setdefault((row.action, movie), set()).add(row.split)
        assert row.path.parent.name == row.action
    assert all(len(splits_) == 1 for splits_ in movie_splits.values())
    assert {movie for (_, movie), s in movie_splits.items() if s == {"test"}} == {"Movie_6", "Movie_7"}
    reasons = sorted((entry.reason, Path(entry.source.split(": ")[1]).name[:5]) for entry in report.skipped)
    assert reasons == [("file not found", "Gone_")] * 2 + [("unused in split 1", "Spare")] * 2

    write_lines(splits / "ride_bike_test_split1.txt", ["a.avi 1", "b.avi 3"])
    with pytest.raises(ImportFormatError, match=r"ride_bike_test_split1\.txt:2:"):
        import_hmdb51(videos, splits, tmp_path / "hmdb.csv")
    with pytest.raises(ImportFormatError, match="_test_split3"):
        import_hmdb51(videos, splits, tmp_path / "hmdb.csv", split=3)


# --- Kinetics ---------------------------------------------------------------------------


def test_kinetics_finds_videos_anywhere_and_skips_with_reasons(tmp_path: Path) -> None:
    videos = tmp_path / "kinetics"
    touch(videos / "train" / "abseiling" / "-abc_def_000014_000024.mp4")
    touch(videos / "train" / "air drumming" / "xyz_000000_000010.mp4")
    touch(videos / "val" / "val1_000005_000015.mp4")
    touch(videos / "test" / "tst1_000001_000011.mp4")
    train_csv = write_lines(tmp_path / "train.csv", [
        "label,youtube_id,time_start,time_end,split",
        "abseiling,-abc_def,14,24,train",
        '"air drumming",xyz,0,10,train',
        "abseiling,gone,1,11,train",
        "abseiling,-abc_def,14,24,train",
    ])
    val_csv = write_lines(tmp_path / "validate.csv", [
        "label,youtube_id,time_start,time_end,split", "abseiling,val1,5,15,validate",
    ])
    test_csv = write_lines(tmp_path / "test.csv", ["youtube_id,time_start,time_end,split", "tst1,1,11,test"])

    report = import_kinetics(videos, [train_csv, val_csv, test_csv], tmp_path / "k.csv")

    manifest = read_manifest(report.manifest)
    assert {(row.rel_path, row.split, row.action) for row in manifest.rows} == {
        ("kinetics/train/abseiling/-abc_def_000014_000024.mp4", "train", "abseiling"),
        ("kinetics/train/air drumming/xyz_000000_000010.mp4", "train", "air drumming"),
        ("kinetics/val/val1_000005_000015.mp4", "val", "abseiling"),
    }
    assert report.rows_per_split == {"train": 2, "val": 1, "test": 0}
    skipped = {(entry.source.split(": ")[1], entry.reason.split(" of ")[0]) for entry in report.skipped}
    assert skipped == {
        ("gone_000001_000011", "file not found"),
        ("-abc_def_000014_000024", "duplicate"),
        ("tst1_000001_000011", "no action label"),
    }
    assert any(entry.source.startswith(f"{train_csv}:5") for entry in report.skipped)

    labelled_test = write_lines(tmp_path / "test_labelled.csv", [
        "label,youtube_id,time_start,time_end,split", "abseiling,tst1,1,11,test",
    ])
    report = import_kinetics(videos, [train_csv, labelled_test], tmp_path / "k2.csv")
    assert report.rows_per_split["test"] == 1

    bad = write_lines(tmp_path / "bad.csv", ["label,youtube_id,time_start,time_end,split", "a,b,1,2,holdout"])
    with pytest.raises(ImportFormatError, match=r"bad\.csv:2:"):
        import_kinetics(videos, bad, tmp_path / "k3.csv")


# --- VISPR ------------------------------------------------------------------------------


def vispr_annotation(annotations: Path, folder: str, image_id: str, labels: list[str]) -> None:
    file = annotations / folder / f"{image_id}.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({
        "id": image_id, "image_path": f"images/{folder}/{image_id}.jpg", "labels": labels,
    }))


def test_vispr_writes_attribute_columns_per_split(tmp_path: Path) -> None:
    root, annotations = tmp_path / "vispr", tmp_path / "vispr" / "annotations"
    vispr_annotation(annotations, "train2017", "2017_1", ["a0_safe", "a4_gender", "a17_color"])
    vispr_annotation(annotations, "train2017", "2017_2", ["a0_safe"])
    vispr_annotation(annotations, "val2017", "2017_3", ["a4_gender"])
    vispr_annotation(annotations, "test2017", "2017_4", ["a17_color"])
    touch(root / "images" / "train2017" / "2017_1.jpg")  # found through image_path
    touch(root / "train2017" / "2017_2.jpg")  # found through <split folder>/<id>.jpg
    touch(root / "images" / "val2017" / "2017_3.jpg")  # 2017_4 has no image

    report = import_vispr(root, annotations, root / "vispr.csv", attributes=("a4_gender", "a17_color"))

    manifest = read_manifest(report.manifest)
    assert manifest.attr_names == ("a4_gender", "a17_color")
    assert [(row.rel_path, row.split, row.action, row.attrs) for row in manifest.rows] == [
        ("images/train2017/2017_1.jpg", "train", None, {"a4_gender": 1, "a17_color": 1}),
        ("train2017/2017_2.jpg", "train", None, {"a4_gender": 0, "a17_color": 0}),
        ("images/val2017/2017_3.jpg", "val", None, {"a4_gender": 1, "a17_color": 0}),
    ]
    assert all(row.is_image for row in manifest.rows)
    assert [(entry.source.endswith("images/test2017/2017_4.jpg"), entry.reason) for entry in report.skipped] == [
        (True, "file not found")
    ]


def test_vispr_default_attributes_and_errors(tmp_path: Path) -> None:
    annotations = tmp_path / "annotations"
    vispr_annotation(annotations, "train2017", "2017_1", list(VISPR_PAPER_ATTRIBUTES))
    touch(tmp_path / "images" / "train2017" / "2017_1.jpg")
    report = import_vispr(tmp_path, annotations, tmp_path / "v.csv")
    manifest = read_manifest(report.manifest)
    assert manifest.attr_names == VISPR_PAPER_ATTRIBUTES
    assert sorted(entry.source.rsplit("/", 1)[1] for entry in report.skipped) == ["test2017", "val2017"]

    with pytest.raises(ImportFormatError, match="a4_Gender"):
        import_vispr(tmp_path, annotations, tmp_path / "v.csv", attributes=("a4_Gender",))

    broken = annotations / "train2017" / "2017_9.json"
    broken.write_text('{"id": "2017_9", "labels": [')
    with pytest.raises(ImportFormatError, match=r"2017_9\.json"):
        import_vispr(tmp_path, annotations, tmp_path / "v.csv")
