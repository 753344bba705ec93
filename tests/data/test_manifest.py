import hashlib
import os
from pathlib import Path

import pytest

from aam_search.data.manifest import (
    IMAGE_SUFFIXES,
    ManifestError,
    missing_files,
    read_manifest,
    write_manifest,
)

MIXED = """path,split,action,attr:gender,attr:face,task:scene,group:skin
videos/a.mp4,train,10,,,indoor,light
videos/b.mp4,train,2,,,outdoor,dark
videos/c.mp4, val ,2,,,,light
images/d.jpg,train,,1,0,,
images/e.PNG,test,,0,,,
"""


def write(tmp_path: Path, text: str, name: str = "manifest.csv") -> Path:
    file = tmp_path / name
    file.write_text(text, encoding="utf-8")
    return file


def error_of(file: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        read_manifest(file)
    return str(caught.value)


def test_mixed_manifest_parses_every_column(tmp_path: Path) -> None:
    manifest = read_manifest(write(tmp_path, MIXED))

    assert manifest.file == tmp_path / "manifest.csv"
    assert manifest.root == tmp_path
    assert manifest.attr_names == ("gender", "face")
    assert manifest.task_names == ("scene",)
    assert manifest.group_names == ("skin",)
    assert manifest.action_classes == ("2", "10")  # numeric, not "10" < "2"
    assert manifest.task_classes("scene") == ("indoor", "outdoor")

    video, _, val_video, image, test_image = manifest.rows
    assert (video.row, video.rel_path, video.split, video.action) == (2, "videos/a.mp4", "train", "10")
    assert video.path == (tmp_path / "videos/a.mp4").resolve()
    assert video.attrs == {"gender": None, "face": None}
    assert video.tasks == {"scene": "indoor"} and video.groups == {"skin": "light"}
    assert not video.is_image
    assert val_video.split == "val" and val_video.tasks == {"scene": None}  # cells are stripped
    assert image.action is None and image.attrs == {"gender": 1, "face": 0}
    assert image.is_image and test_image.is_image  # suffix check ignores case
    assert test_image.attrs == {"gender": 0, "face": None}
    assert [row.rel_path for row in manifest.split_rows("train")] == [
        "videos/a.mp4", "videos/b.mp4", "images/d.jpg"
    ]
    assert [row.row for row in manifest.split_rows("test")] == [6]
    assert manifest.content_hash() == hashlib.sha256(MIXED.encode()).hexdigest()
    assert IMAGE_SUFFIXES == {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def test_lexicographic_classes_bom_and_attr_only_manifest(tmp_path: Path) -> None:
    text = "\ufeffpath,split,attr:gender\na.jpg,train,1\nb.jpg,train,0\n"
    manifest = read_manifest(write(tmp_path, text))
    assert manifest.action_classes == ()
    assert [row.attrs["gender"] for row in manifest.rows] == [1, 0]

    named = read_manifest(write(tmp_path, "path,split,action\na.mp4,train,walk\nb.mp4,train,10\n", "n.csv"))
    assert named.action_classes == ("10", "walk")


def test_split_rows_and_task_classes_reject_unknown_names(tmp_path: Path) -> None:
    manifest = read_manifest(write(tmp_path, MIXED))
    with pytest.raises(ValueError, match="validation"):
        manifest.split_rows("validation")
    with pytest.raises(KeyError, match="nope"):
        manifest.task_classes("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["empty file"]),
        ("path,action\na.mp4,1\n", ["row 1", "column 'split'", "missing"]),
        ("split,action\ntrain,1\n", ["row 1", "column 'path'"]),
        ("path,split\na.mp4,train\n", ["row 1", "column 'action'", "attr:"]),
        ("path,split,action,label\na.mp4,train,1,x\n", ["row 1", "column 'label'", "unknown column"]),
        ("path,split,action,attr:\na.mp4,train,1,1\n", ["row 1", "column 'attr:'"]),
        ("path,split,action,action\na.mp4,train,1,1\n", ["row 1", "column 'action'", "duplicate"]),
        ("path,split,action\na.mp4,train,1\n,train,2\n", ["row 3", "column 'path'", "empty path"]),
        ("path,split,action\na.mp4,train,1\nb.mp4,dev,2\n",
         ["row 3", "column 'split'", "'dev'", "train, val, test"]),
        ("path,split,action,attr:g\na.mp4,train,1,\nb.mp4,train,,1.0\n", ["row 3", "column 'attr:g'", "'1.0'"]),
        ("path,split,action,attr:g\na.mp4,train,1,2\n", ["row 2", "column 'attr:g'", "'2'"]),
        ("path,split,action\n../a.mp4,train,1\n", ["row 2", "column 'path'", "outside"]),
        ("path,split,action\nx/../../a.mp4,train,1\n", ["row 2", "column 'path'", "outside"]),
        ("path,split,action\n/etc/passwd,train,1\n", ["row 2", "column 'path'", "absolute"]),
        ("path,split,action\na.mp4,train,1\nb.mp4,train,1\nx/../a.mp4,val,1\n",
         ["row 4", "column 'path'", "duplicate", "row 2"]),
        ("path,split,action\na.mp4,val,1\nb.mp4,test,1\n", ["column 'split'", "train"]),
        ("path,split,action,attr:g\na.mp4,train,1,\nb.mp4,train,,\n", ["row 3", "neither"]),
        ("path,split,action\na.mp4,train,1,extra\n", ["row 2", "expected 3 cells"]),
        ("path,split,action\n", ["no data rows"]),
        # a cell over the csv module's 128 KiB limit (`_csv.Error` before)
        ("path,split,action\na.mp4,train,1\nb.mp4,train,\"" + "x" * (200 * 1024) + "\"\n",
         ["row 3", "cannot parse the CSV", "field larger than field limit"]),
        ("path" + "x" * (200 * 1024) + ",split\n", ["row 1", "cannot parse the CSV"]),
    ],
)
def test_invalid_manifests_name_file_row_and_column(tmp_path: Path, text: str, expected: list[str]) -> None:
    file = write(tmp_path, text)
    message = error_of(file)
    assert str(file) in message
    for part in expected:
        assert part in message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    assert "not found" in error_of(tmp_path / "absent.csv")


def test_symlinked_storage_inside_the_dataset_is_allowed(tmp_path: Path) -> None:
    # `videos -> /mnt/shared/videos` is a deliberate user choice, unlike a `..` in a cell.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "v.mp4").touch()
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    os.symlink(outside, dataset / "videos")
    manifest = read_manifest(write(dataset, "path,split,action\nvideos/v.mp4,train,1\n"))
    assert manifest.rows[0].path == dataset / "videos" / "v.mp4"
    assert manifest.rows[0].path.is_file()
    assert "outside" in error_of(write(dataset, "path,split,action\nvideos/../../x.mp4,train,1\n"))


def test_missing_files_lists_only_absent_rows(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos/a.mp4").touch()
    (tmp_path / "images").mkdir()
    (tmp_path / "images/d.jpg").touch()
    manifest = read_manifest(write(tmp_path, MIXED))
    assert [row.rel_path for row in missing_files(manifest)] == ["videos/b.mp4", "videos/c.mp4", "images/e.PNG"]


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    rows = [
        {"path": "v/1.mp4", "split": "train", "action": "jump", "task:scene": "gym", "group:sex": "f"},
        {"path": "i/2.jpg", "split": "train", "attr:gender": True, "attr:face": 0},
        {"path": "v/3.mp4", "split": "test", "action": "run", "attr:face": None, "group:sex": None},
    ]
    file = write_manifest(tmp_path / "sub" / "m.csv", rows)

    header = file.read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,split,action,attr:gender,attr:face,task:scene,group:sex"
    manifest = read_manifest(file)
    assert [(row.rel_path, row.split, row.action) for row in manifest.rows] == [
        ("v/1.mp4", "train", "jump"), ("i/2.jpg", "train", None), ("v/3.mp4", "test", "run")
    ]
    assert manifest.rows[1].attrs == {"gender": 1, "face": 0}
    assert manifest.rows[0].tasks == {"scene": "gym"} and manifest.rows[2].groups == {"sex": None}
    assert not list(file.parent.glob(".*partial"))


def test_write_uses_given_column_order_and_rejects_unlisted_keys(tmp_path: Path) -> None:
    rows = [{"path": "a.jpg", "split": "train", "attr:b": 1, "attr:a": 0}]
    file = write_manifest(tmp_path / "m.csv", rows, columns=["attr:a", "path", "attr:b", "split"])
    assert read_manifest(file).attr_names == ("a", "b")

    with pytest.raises(ManifestError, match="attr:b"):
        write_manifest(tmp_path / "m2.csv", rows, columns=["path", "split", "attr:a"])
    assert not (tmp_path / "m2.csv").exists()
    with pytest.raises(ManifestError, match="label"):
        write_manifest(tmp_path / "m3.csv", [{"path": "a", "split": "train", "label": 1}])
