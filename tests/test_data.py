"""Tests for the embedded digits-det dataset and `resolve_dataset`."""

import json
import os
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolo_advamd.data import (
    DIGITS_BUILDER_KEYS,
    build_digits_det,
    dataset_dir,
    resolve_dataset,
)
from yolo_advamd.data.digits import COMPLETE_MARKER

REPO = Path(__file__).resolve().parents[1]
SIZES = {"n_train": 40, "n_val": 20, "imgsz": 160}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache directory holding one small build with seed 0."""
    root = tmp_path_factory.mktemp("cache")
    build_digits_det(root=root, seed=0, **SIZES)
    return root


@pytest.fixture(scope="module")
def built(cache):
    """Directory of the small seed-0 build."""
    return dataset_dir(seed=0, root=cache, **SIZES)


def read_labels(root, split):
    """Return {stem: array (n, 5) of class cx cy w h} for one split."""
    return {f.stem: np.loadtxt(f, ndmin=2) for f in sorted((root / "labels" / split).glob("*.txt"))}


def file_bytes(root):
    """Return {relative path: bytes} of every file of a build except its YAML (which holds its absolute path)."""
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != "digits-det.yaml"
    }


def test_same_seed_gives_byte_identical_files_other_seed_differs(built, tmp_path):
    again = build_digits_det(root=tmp_path / "a", seed=0, **SIZES)
    other = build_digits_det(root=tmp_path / "b", seed=1, **SIZES)
    reference = file_bytes(built)
    assert len(reference) == 2 * (40 + 20) + 3  # images, labels, COCO JSON, sources, marker
    assert file_bytes(again) == reference
    differing = [k for k, v in file_bytes(other).items() if k.endswith(".png") and reference.get(k) != v]
    assert len(differing) == 60


def test_scenes_are_valid_detection_samples(built):
    sources = json.loads((built / "sources.json").read_text())
    for split, n in (("train", 40), ("val", 20)):
        labels = read_labels(built, split)
        images = sorted(p.stem for p in (built / "images" / split).glob("*.png"))
        assert images == sorted(labels) == [f"{i:06d}" for i in range(1, n + 1)]
        for stem, rows in labels.items():
            image = cv2.imread(str(built / "images" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert image.shape == (160, 160, 3) and image.dtype == np.uint8
            assert 1 <= len(rows) <= 6
            cls, xywh = rows[:, 0], rows[:, 1:] * 160
            assert np.array_equal(cls, cls.astype(int)) and set(cls.astype(int)) <= set(range(10))
            boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            assert (boxes >= -1e-3).all() and (boxes <= 160 + 1e-3).all()
            objects = sources[split][stem]
            assert len(objects) == len(rows)
            for box, obj in zip(boxes, objects):
                x, y, s = obj["square"]
                assert 16 <= s <= 64
                assert x - 1e-3 <= box[0] < box[2] <= x + s + 1e-3 and y - 1e-3 <= box[1] < box[3] <= y + s + 1e-3
                assert box[3] - box[1] == pytest.approx(s, abs=1e-3)  # every scan has ink in all 8 rows
            for a, b in combinations(boxes, 2):
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 1e-3 or overlap_h <= 1e-3, f"{split}/{stem}: boxes {a} and {b} overlap"


def test_train_and_val_use_disjoint_source_scans_of_the_labelled_class(built):
    from sklearn.datasets import load_digits

    targets = load_digits().target
    sources = json.loads((built / "sources.json").read_text())
    scans = {split: {o["scan"] for objs in sources[split].values() for o in objs} for split in ("train", "val")}
    assert scans["train"] and scans["val"] and not scans["train"] & scans["val"]
    for split in ("train", "val"):
        for stem, rows in read_labels(built, split).items():
            assert [targets[o["scan"]] for o in sources[split][stem]] == rows[:, 0].astype(int).tolist()


def test_coco_json_matches_yolo_labels(built):
    from pycocotools.coco import COCO

    coco = COCO(str(built / "annotations" / "instances_val.json"))
    labels = read_labels(built, "val")
    assert sorted(c["id"] for c in coco.loadCats(coco.getCatIds())) == list(range(1, 11))  # class + 1
    assert sorted(coco.getImgIds()) == sorted(int(stem) for stem in labels)  # Ultralytics: image_id = int(stem)
    for stem, rows in labels.items():
        image = coco.loadImgs(int(stem))[0]
        assert image["file_name"] == f"{stem}.png" and (built / "images" / "val" / image["file_name"]).is_file()
        assert (image["width"], image["height"]) == (160, 160)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=int(stem)))
        assert [a["category_id"] - 1 for a in anns] == rows[:, 0].astype(int).tolist()
        xywh = rows[:, 1:] * 160
        expected = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, 2:]], 1)
        assert np.abs(np.array([a["bbox"] for a in anns]) - expected).max() <= 1.0
        assert all(a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], abs=0.1) for a in anns)


def test_interrupted_builds_are_never_used(tmp_path):
    target = dataset_dir(seed=3, root=tmp_path, **SIZES)
    (target / "images").mkdir(parents=True)
    (target / "images" / "junk.png").write_bytes(b"half a build")  # no completion marker
    stale = tmp_path / f".{target.name}.tmp-99999999-abc"  # left by a process that no longer runs
    live = tmp_path / f".{target.name}.tmp-{os.getpid()}-abc"  # a build under way in a running process
    stale.mkdir()
    live.mkdir()

    assert build_digits_det(root=tmp_path, seed=3, **SIZES) == target
    assert (target / COMPLETE_MARKER).is_file()
    assert not (target / "images" / "junk.png").exists()
    assert len(list((target / "images" / "train").glob("*.png"))) == 40
    assert not stale.exists() and live.exists()

    marker_time = (target / COMPLETE_MARKER).stat().st_mtime_ns
    assert build_digits_det(root=tmp_path, seed=3, **SIZES) == target  # a finished build is reused, not rewritten
    assert (target / COMPLETE_MARKER).stat().st_mtime_ns == marker_time


def test_resolve_digits_yaml_gives_a_yaml_ultralytics_accepts_offline(cache, built, tmp_path, monkeypatch):
    from ultralytics.data.utils import check_det_dataset

    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(cache))
    spec = tmp_path / "digits-small.yaml"
    spec.write_text(yaml.safe_dump({"builder": "digits-det", "seed": 0, **SIZES}))
    resolved = resolve_dataset(str(spec))
    assert Path(resolved) == built / "digits-det.yaml"  # the cached build is found, not rebuilt
    data = check_det_dataset(resolved, autodownload=False)
    assert data["nc"] == 10 and data["names"] == {i: str(i) for i in range(10)}
    assert Path(data["train"]) == built / "images" / "train" and Path(data["val"]).is_dir()
    assert resolve_dataset(resolved) == resolved  # a ready YAML with its images on disk passes through


def test_repository_digits_yaml_names_the_default_build():
    spec = yaml.safe_load((REPO / "data" / "digits-det.yaml").read_text())
    assert spec == {"builder": "digits-det", **DIGITS_BUILDER_KEYS}


def test_unknown_digits_key_is_rejected_with_the_valid_keys(tmp_path):
    spec = tmp_path / "d.yaml"
    spec.write_text("builder: digits-det\nn_trian: 10\n")
    with pytest.raises(ValueError, match=r"n_trian.*n_train"):
        resolve_dataset(str(spec))


def test_missing_coco_raises_where_and_how_without_download(tmp_path):
    coco = yaml.safe_load((REPO / "data" / "coco.yaml").read_text())
    assert len(coco["names"]) == 80 and "download" not in coco
    assert (coco["train"], coco["val"]) == ("train2017.txt", "val2017.txt")
    coco["path"] = str(tmp_path / "coco")
    spec = tmp_path / "coco.yaml"
    spec.write_text(yaml.safe_dump(coco))
    with pytest.raises(FileNotFoundError) as error:
        resolve_dataset(str(spec))
    message = str(error.value)
    assert str(tmp_path / "coco" / "val2017.txt") in message
    assert "downloads nothing" in message and "images.cocodataset.org" in message
    assert not (tmp_path / "coco").exists()


def test_missing_yaml_and_urls_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dataset(str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        resolve_dataset("https://example.com/data.zip")
