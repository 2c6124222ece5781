"""Real-dataset loaders and ``check_dataset`` on tiny trees in the official layouts."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from tests.support.datasets import (
    AFFECTNET_NAMES,
    AU,
    COLUMNS,
    RAF_NAMES,
    make_affectnet_tree,
    make_affwild2_tree,
    make_rafdb_tree,
    replace_line,
    write_garbage,
    )
from trainers.data.affectnet import load_affectnet
from trainers.data.affwild2 import check_video_disjoint, load_affwild2
from trainers.data.check import check_dataset
from trainers.data.errors import DataFormatError
from trainers.data.rafdb import load_rafdb


def _row(df: pd.DataFrame, video: str, frame: int) -> pd.Series:
    rows = df[(df["group"] == video) & (df["frame"] == frame)]
    assert len(rows) == 1
    return rows.iloc[0]


# ------------------------------------------------------------------------------------- Aff-Wild2


def test_affwild2_per_task_outer_join_matches_expected(tmp_path):
    tree = make_affwild2_tree(tmp_path)
    for split in ("train", "val"):
        df = load_affwild2(tmp_path, split)
        assert list(df.columns) == list(COLUMNS)
        assert df.attrs["label_space"] == "affwild2"
        pd.testing.assert_frame_equal(df, tree.expected[split])
    train = load_affwild2(tmp_path, "train")
    # 3 videos x 6 annotated frames, one frame has no cropped image: dropped and reported
    assert len(train) == 17
    report = train.attrs["load_report"]
    assert report["layout"] == "per_task"
    assert report["annotated_frames"] == 18 and report["missing_images"] == 1
    assert report["missing_image_examples"] == [str(tmp_path / "cropped_aligned/video1/00006.jpg")]
    assert (train.groupby("group")["frame"].apply(list)["video1"]) == [1, 2, 3, 4, 5]


def test_affwild2_sentinels_become_nan_and_minus_one(tmp_path):
    tree = make_affwild2_tree(tmp_path)
    df = load_affwild2(tmp_path, "train")
    lines = {k: p.read_text().splitlines() for k, p in tree.files.items()}
    # frame 5 of video2: VA file says -5,-5 -> NaN (line 6 = frame 5 after the header)
    assert lines["VA/train/video2"][5] == "-5,-5"
    r = _row(df, "video2", 5)
    assert np.isnan(r["valence"]) and np.isnan(r["arousal"]) and r["expr"] >= 0
    # frame 4: EXPR -1 stays -1
    assert lines["EXPR/train/video2"][4] == "-1"
    assert _row(df, "video2", 4)["expr"] == -1
    # frame 3: AU all -1 -> NaN
    assert lines["AU/train/video2"][3] == ",".join(["-1"] * 12)
    assert _row(df, "video2", 3)[list(AU)].isna().all()
    # video1's EXPR file is two lines short: frame 5 has no EXPR (outer join fills -1)
    assert len(lines["EXPR/train/video1"]) == 1 + 4
    assert _row(df, "video1", 5)["expr"] == -1
    # video3 has no AU file at all
    assert "AU/train/video3" not in tree.files
    assert df.loc[df["group"] == "video3", list(AU)].isna().all().all()
    # valid AUs are 0/1 floats, valid VA in [-1, 1], EXPR in the ABAW order range
    au = df[list(AU)].to_numpy()
    assert set(np.unique(au[~np.isnan(au)])) <= {0.0, 1.0}
    assert df["expr"].between(-1, 7).all()
    assert np.nanmax(np.abs(df[["valence", "arousal"]].to_numpy())) <= 1.0


@pytest.mark.parametrize("where", ["", "MTL_Challenge", "annotations"])
def test_affwild2_mtl_layout(tmp_path, where):
    tree = make_affwild2_tree(tmp_path, layout="mtl", annotations_dir=where)
    for split in ("train", "val"):
        df = load_affwild2(tmp_path, split)
        assert df.attrs["load_report"]["layout"] == "mtl"
        pd.testing.assert_frame_equal(df, tree.expected[split])


def test_affwild2_per_task_under_annotations_with_classification_name(tmp_path):
    tree = make_affwild2_tree(tmp_path, annotations_dir="annotations",
                              expr_dir="EXPR_Classification_Challenge")
    df = load_affwild2(tmp_path, "val")
    pd.testing.assert_frame_equal(df, tree.expected["val"])
    assert df.attrs["load_report"]["annotation_sources"]["expr"].endswith(
        "annotations/EXPR_Classification_Challenge/Validation_Set")


def test_affwild2_every_k_and_unlabelled_frames(tmp_path):
    tree = make_affwild2_tree(tmp_path, frames=20)
    full = load_affwild2(tmp_path, "train")
    pd.testing.assert_frame_equal(full, tree.expected["train"])
    # frame 20 of video3 has VA -5, EXPR -1 and no AU file: no valid label, dropped and counted
    assert tree.info["unlabelled"]["train"] == 1
    assert full.attrs["load_report"]["unlabelled_frames"] == 1
    assert 20 not in set(full.loc[full["group"] == "video3", "frame"])
    sub = load_affwild2(tmp_path, "train", every_k=3)
    for video, frames in full.groupby("group")["frame"]:
        assert sub.loc[sub["group"] == video, "frame"].tolist() == frames.tolist()[::3]
    with pytest.raises(ValueError, match="every_k"):
        load_affwild2(tmp_path, "train", every_k=0)


def test_affwild2_check_images_false_keeps_annotated_frames(tmp_path):
    make_affwild2_tree(tmp_path)
    df = load_affwild2(tmp_path, "train", check_images=False)
    assert len(df) == 18
    assert str(tmp_path / "cropped_aligned/video1/00006.jpg") in set(df["path"])


def test_check_video_disjoint(tmp_path):
    make_affwild2_tree(tmp_path)
    train, val = load_affwild2(tmp_path, "train"), load_affwild2(tmp_path, "val")
    assert check_video_disjoint(train, val) == []
    leaky = pd.concat([val, train[train["group"] == "video2"]])
    with pytest.raises(DataFormatError, match="share 1 video.*video2"):
        check_video_disjoint(train, leaky)
    assert check_video_disjoint(train, leaky, strict=False) == ["video2"]


AU_BAD = "0,1,x,0,0,0,0,0,0,0,0,0"


@pytest.mark.parametrize("key, line, text, message", [
    ("VA/train/video2", 3, "0.1", "expected 2 columns, got 1"),
    ("VA/val/video5", 5, "1.5,0.2", "valence 1.5 out of range (expected -1..1, or -5 for missing)"),
    ("EXPR/train/video2", 4, "9", "unknown expression label 9 (expected 0-7, or -1 for missing)"),
    ("EXPR/val/video4", 2, "-2", "unknown expression label -2 (expected 0-7, or -1 for missing)"),
    ("AU/val/video4", 2, AU_BAD, "non-numeric AU4 'x'"),
    ("AU/train/video1", 7, "0,1,2,0,0,0,0,0,0,0,0,0", "AU4 value 2 (expected 0 or 1, or -1 for missing)"),
    ("VA/train/video1", 3, "", "empty line; expected 2 columns"),
    ("VA/train/video3", 4, "NA,0.2", "non-numeric valence 'NA'"),
    ("VA/train/video3", 6, "0.2,nan", "arousal nan out of range (expected -1..1, or -5 for missing)"),
    ("AU/train/video2", 1, "AU2,AU1,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
     "AU columns are AU2,AU1,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26; "
     "expected AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"),
    ("VA/train/video1", 1, "0.1,0.2", "expected a header line (valence,arousal), got data; "
                                      "line i after the header must describe frame i"),
])
def test_affwild2_malformed_line_names_file_and_line(tmp_path, key, line, text, message):
    tree = make_affwild2_tree(tmp_path)
    replace_line(tree.files[key], line, text)
    split = key.split("/")[1]
    with pytest.raises(DataFormatError) as err:
        load_affwild2(tmp_path, split)
    assert str(err.value) == f"{tree.files[key]}:{line}: {message}"
    assert err.value.line == line and err.value.path == str(tree.files[key])


@pytest.mark.parametrize("line, text, message", [
    (7, "video2/00001.jpg,0.1,0.2,3", "expected 16 columns, got 4"),
    (4, "video1/00003.jpg,0.1,0.2,8," + ",".join(["0"] * 12),
     "unknown expression label 8 (expected 0-7, or -1 for missing)"),
    (3, "video1/00002.jpg,0.1,abc,3," + ",".join(["0"] * 12), "non-numeric arousal 'abc'"),
    (6, "00005.jpg,0.1,0.2,3," + ",".join(["0"] * 12),
     "image '00005.jpg' is not of the form <video>/<NNNNN>.jpg"),
    (2, "video1/00001.jpg,0.1,0.2,3," + ",".join(["0"] * 11) + ",0.5",
     "AU26 value 0.5 (expected 0 or 1, or -1 for missing)"),
    (5, "video1/00001.jpg,0.1,0.2,3," + ",".join(["0"] * 12),
     "duplicate image 'video1/00001.jpg' (first at line 2)"),
])
def test_affwild2_mtl_malformed_line(tmp_path, line, text, message):
    tree = make_affwild2_tree(tmp_path, layout="mtl")
    replace_line(tree.files["MTL/train"], line, text)
    with pytest.raises(DataFormatError) as err:
        load_affwild2(tmp_path, "train")
    assert str(err.value) == f"{tree.files['MTL/train']}:{line}: {message}"


def test_affwild2_missing_annotations_and_bad_arguments(tmp_path):
    (tmp_path / "cropped_aligned").mkdir()
    with pytest.raises(FileNotFoundError, match="no Aff-Wild2 train annotations.*VA_Estimation_Challenge"):
        load_affwild2(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_affwild2(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="nowhere: Aff-Wild2 root folder not found"):
        load_affwild2(tmp_path / "nowhere", "train")
    (tmp_path / "cropped_aligned").rmdir()
    with pytest.raises(FileNotFoundError, match="cropped_aligned: folder of face crops not found"):
        load_affwild2(tmp_path, "train")


def test_affwild2_video_without_image_folder(tmp_path):
    make_affwild2_tree(tmp_path)
    shutil.rmtree(tmp_path / "cropped_aligned" / "video2")
    df = load_affwild2(tmp_path, "train")
    assert "video2" not in set(df["group"])
    assert df.attrs["load_report"]["videos_without_images"] == ["video2"]
    report = check_dataset(tmp_path, "affwild2", open_images=False)
    assert not report.ok
    assert any("video video2 is annotated" in p and str(tmp_path / "cropped_aligned/video2") in p
               for p in report.problems)


# ------------------------------------------------------------------------------------- AffectNet


def test_affectnet_drops_non_expressions_and_maps_sentinels(tmp_path):
    tree = make_affectnet_tree(tmp_path)
    for split in ("train", "val"):
        df = load_affectnet(tmp_path, split)
        assert df.attrs["label_space"] == "affectnet"
        pd.testing.assert_frame_equal(df, tree.expected[split])
    df = load_affectnet(tmp_path, "train")
    # 22 rows with classes cycling 0..10: 8, 9, 10 dropped (2 each), 0..7 kept in file order
    assert len(df) == 16
    assert df.attrs["load_report"]["dropped_classes"] == {"None": 2, "Uncertain": 2, "No-Face": 2}
    assert df["expr"].tolist() == [i % 11 for i in range(22) if i % 11 < 8]
    assert df[list(AU)].isna().all().all()
    assert (df["frame"] == 0).all() and df["group"].iloc[0] == "t0000"
    # row 5 of the csv has valence/arousal -2 (missing) -> NaN; row 4 is valid
    assert tree.files["train"].read_text().splitlines()[6].endswith(",5,-2.0,-2.0")
    assert np.isnan(df.loc[5, "valence"]) and np.isnan(df.loc[5, "arousal"])
    assert df.loc[4, "valence"] == pytest.approx((4 * 7 % 21 - 10) / 10)
    assert not {"face_x", "face_y", "face_width", "face_height"} & set(df.columns)


def test_affectnet_crop_faces_adds_boxes(tmp_path):
    tree = make_affectnet_tree(tmp_path)
    df = load_affectnet(tmp_path, "val", crop_faces=True)
    assert list(df.columns) == [*COLUMNS, "face_x", "face_y", "face_width", "face_height"]
    np.testing.assert_array_equal(df[["face_x", "face_y", "face_width", "face_height"]].to_numpy(),
                                  tree.info["boxes"]["val"])


@pytest.mark.parametrize("line, text, message", [
    (17, "1/t0015.jpg,2,1,16,18,\"1;2\",4", "expected 9 columns, got 7"),
    (3, "2/t0001.jpg,3,2,17,18,\"1;2\",11,0.1,0.2", "unknown expression label 11 (expected 0-10)"),
    (4, "3/t0002.jpg,4,1,18,18,\"1;2\",2,high,0.2", "non-numeric valence 'high'"),
    (5, "1/t0003.jpg,2,2,19,18,\"1;2\",3,0.1,-3",
     "arousal -3 out of range (expected -1..1, or -2 for missing)"),
])
def test_affectnet_malformed_line(tmp_path, line, text, message):
    tree = make_affectnet_tree(tmp_path)
    replace_line(tree.files["train"], line, text)
    with pytest.raises(DataFormatError) as err:
        load_affectnet(tmp_path, "train")
    assert str(err.value) == f"{tree.files['train']}:{line}: {message}"


def test_affectnet_missing_image_is_named(tmp_path):
    make_affectnet_tree(tmp_path, missing=[("train", 3)])
    image = tmp_path / "Manually_Annotated_Images" / "1" / "t0003.jpg"
    with pytest.raises(FileNotFoundError) as err:
        load_affectnet(tmp_path, "train")
    assert f"{image} (listed at {tmp_path / 'training.csv'}:5)" in str(err.value)
    assert len(load_affectnet(tmp_path, "train", check_images=False)) == 16
    load_affectnet(tmp_path, "val")  # the other split is complete


def test_affectnet_headerless_validation_file(tmp_path):
    tree = make_affectnet_tree(tmp_path)
    path = tree.files["val"]
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    pd.testing.assert_frame_equal(load_affectnet(tmp_path, "val"), tree.expected["val"])


# ------------------------------------------------------------------------------------- RAF-DB


def test_rafdb_maps_labels_into_affectnet_order(tmp_path):
    tree = make_rafdb_tree(tmp_path)
    for split in ("train", "test"):
        df = load_rafdb(tmp_path, split)
        assert df.attrs["label_space"] == "rafdb"
        pd.testing.assert_frame_equal(df, tree.expected[split])
    train = load_rafdb(tmp_path, "train")
    assert len(train) == 14 and train["group"].iloc[0] == "train_00001"
    assert train["path"].iloc[0] == str(tmp_path / "Image/aligned/train_00001_aligned.jpg")
    # RAF-DB 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
    by_raf = dict(zip(range(1, 8), train["expr"].iloc[:7]))
    assert [AFFECTNET_NAMES[by_raf[k]] for k in range(1, 8)] == list(RAF_NAMES)
    assert by_raf == {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
    assert 7 not in set(train["expr"])  # contempt has no RAF-DB counterpart
    assert train[["valence", "arousal", *AU]].isna().all().all()
    pd.testing.assert_frame_equal(load_rafdb(tmp_path, "val"), load_rafdb(tmp_path, "test"))
    with pytest.raises(ValueError, match="split"):
        load_rafdb(tmp_path, "validation")


@pytest.mark.parametrize("line, text, message", [
    (3, "train_00003.jpg 9", "unknown label 9 (expected 1-7)"),
    (2, "train_00002.jpg", "expected 2 fields (image label), got 1"),
    (4, "train_00004.jpg happy", "label 'happy' is not an integer (expected 1-7)"),
    (5, "img_00005.jpg 2", "image name 'img_00005.jpg' does not start with train_ or test_"),
])
def test_rafdb_malformed_line(tmp_path, line, text, message):
    tree = make_rafdb_tree(tmp_path)
    replace_line(tree.files["labels"], line, text)
    with pytest.raises(DataFormatError) as err:
        load_rafdb(tmp_path, "test")
    assert str(err.value) == f"{tree.files['labels']}:{line}: {message}"


def test_rafdb_missing_image_is_named(tmp_path):
    make_rafdb_tree(tmp_path, missing=["test_0002"])
    load_rafdb(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "Image/aligned/test_0002_aligned.jpg")):
        load_rafdb(tmp_path, "test")


# ------------------------------------------------------------------------------------- check_dataset


@pytest.mark.parametrize("dataset, make", [("affwild2", make_affwild2_tree),
                                           ("affectnet", make_affectnet_tree), ("rafdb", make_rafdb_tree)])
def test_check_dataset_good_tree(tmp_path, dataset, make):
    tree = make(tmp_path)
    report = check_dataset(tmp_path, dataset)
    assert report.ok, report.format()
    assert report.problems == [] and report.overlap == []
    for split, summary in report.splits.items():
        expected = tree.expected[split]
        assert summary.n == len(expected)
        assert summary.valid["EXPR"] == int((expected["expr"] >= 0).sum())
        assert sum(summary.per_class.values()) == summary.valid["EXPR"]
    text = report.format()
    assert text.splitlines()[-1] == "OK"
    assert f"train: {report.splits['train'].n} examples" in text


def test_check_dataset_affwild2_counts(tmp_path):
    tree = make_affwild2_tree(tmp_path)
    report = check_dataset(tmp_path, "affwild2")
    train, exp = report.splits["train"], tree.expected["train"]
    assert train.groups == 3
    assert train.valid == {"VA": int(exp["valence"].notna().sum()), "EXPR": int((exp["expr"] >= 0).sum()),
                           "AU": int(exp["AU1"].notna().sum())}
    assert train.per_class["Anger"] == int((exp["expr"] == 1).sum())
    assert "1 without a cropped image" in report.format()


def test_check_dataset_reports_missing_unreadable_and_overlap(tmp_path):
    make_affectnet_tree(tmp_path, missing=[("train", 2)], unreadable=[("val", 1)])
    # the same image listed in both splits
    train_csv = tmp_path / "training.csv"
    first = train_csv.read_text().splitlines()[1]
    with open(tmp_path / "validation.csv", "a") as f:
        f.write(first + "\n")
    report = check_dataset(tmp_path, "affectnet")
    assert not report.ok
    missing = str(tmp_path / "Manually_Annotated_Images/3/t0002.jpg")
    unreadable = str(tmp_path / "Manually_Annotated_Images/2/v0001.jpg")
    assert report.splits["train"].missing_images == [missing]
    assert [p for p, _ in report.splits["val"].unreadable] == [unreadable]
    assert report.overlap == [str(tmp_path / "Manually_Annotated_Images/1/t0000.jpg")]
    assert len(report.problems) == 3
    text = report.format()
    assert missing in text and unreadable in text and "PROBLEMS (3)" in text


def test_check_dataset_affwild2_overlap_and_malformed(tmp_path):
    tree = make_affwild2_tree(tmp_path)
    shutil.copy(tree.files["VA/train/video1"], tmp_path / "VA_Estimation_Challenge/Validation_Set/video1.txt")
    report = check_dataset(tmp_path, "affwild2", open_images=False)
    assert report.overlap == ["video1"]
    assert any("share 1 videos: video1" in p for p in report.problems)

    replace_line(tree.files["EXPR/train/video2"], 3, "12")
    report = check_dataset(tmp_path, "affwild2", open_images=False)
    assert not report.ok
    expr_file = tree.files["EXPR/train/video2"]
    assert report.splits["train"].error == \
        f"{expr_file}:3: unknown expression label 12 (expected 0-7, or -1 for missing)"
    assert report.problems[0].startswith(f"train: {tree.files['EXPR/train/video2']}:3:")


def test_check_dataset_rafdb_unreadable_image(tmp_path):
    make_rafdb_tree(tmp_path)
    bad = tmp_path / "Image/aligned/train_00004_aligned.jpg"
    write_garbage(bad)
    report = check_dataset(tmp_path, "raf-db")
    assert not report.ok
    assert report.splits["train"].n_unreadable == 1 and report.splits["train"].unreadable[0][0] == str(bad)
    assert str(bad) in report.format()
