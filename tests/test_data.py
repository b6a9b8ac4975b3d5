"""Tests for the embedded digits datasets (digits-det, digits-seg, digits-cls) and `resolve_dataset`."""

import json
import os
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolo_advamd.data import (
    BUILDER_KEYS,
    DATASETS,
    build_digits,
    build_digits_det,
    dataset_dir,
    resolve_dataset,
)
from yolo_advamd.data.digits import COMPLETE_MARKER, INK_THRESHOLD, ink_polygon

REPO = Path(__file__).resolve().parents[1]
SIZES = {"n_train": 40, "n_val": 20, "imgsz": 160}
SMALL = {  # tiny builds of each dataset: digits-det and digits-seg alike, so that their scenes can be compared
    "digits-det": {"n_train": 8, "n_val": 4, "imgsz": 64},
    "digits-seg": {"n_train": 8, "n_val": 4, "imgsz": 64},
    "digits-cls": {"n_train": 20, "n_val": 10, "imgsz": 32},  # >= 10 per split: an image in every class folder
}
CLASSES = [str(i) for i in range(10)]


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


@pytest.fixture(scope="module")
def small(cache):
    """Tiny seed-0 builds of the three datasets in the module's cache: {name: directory}."""
    return {name: build_digits(name, root=cache, seed=0, **sizes) for name, sizes in SMALL.items()}


@pytest.fixture(scope="module")
def scans():
    """The source scans, (1797, 8, 8) with values 0..16, and their classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def read_labels(root, split):
    """Return {stem: array (n, 5) of class cx cy w h} for one split."""
    return {f.stem: np.loadtxt(f, ndmin=2) for f in sorted((root / "labels" / split).glob("*.txt"))}


def file_bytes(root):
    """Return {relative path: bytes} of every file of a build except its YAML (which holds its absolute path)."""
    return {
        str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file() and f.suffix != ".yaml"
    }


def ink_mask(scan, square, imgsz):
    """Return the (imgsz, imgsz) bool mask of the pixels whose centres fall in the inked cells of a scan in `square`."""
    x, y, s = square
    cells = ((np.arange(s) + 0.5) * 8 / s).astype(int)
    mask = np.zeros((imgsz, imgsz), bool)
    mask[y : y + s, x : x + s] = (scan >= INK_THRESHOLD)[cells][:, cells]
    return mask


def pixel_boxes(rows, imgsz):
    """Return YOLO `class cx cy w h` rows as pixel boxes [x0, y0, x1, y1]."""
    xywh = rows[:, 1:] * imgsz
    return np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)


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


@pytest.mark.parametrize("name", DATASETS)
def test_repository_digits_yaml_names_the_default_build(name):
    spec = yaml.safe_load((REPO / "data" / f"{name}.yaml").read_text())
    assert spec == {"builder": name, **BUILDER_KEYS[name]}
    assert BUILDER_KEYS[name] == {
        "seed": 0,
        "n_train": 2000,
        "n_val": 500,
        "imgsz": 32 if name == "digits-cls" else 160,
    }


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


@pytest.mark.parametrize("name", ["digits-seg", "digits-cls"])
def test_same_seed_gives_byte_identical_seg_and_cls_files_other_seed_differs(name, tmp_path):
    sizes = SMALL[name]
    reference = file_bytes(build_digits(name, root=tmp_path / "a", seed=0, **sizes))
    pngs = [k for k in reference if k.endswith(".png")]
    assert len(pngs) == sizes["n_train"] + sizes["n_val"]
    assert file_bytes(build_digits(name, root=tmp_path / "b", seed=0, **sizes)) == reference
    other = file_bytes(build_digits(name, root=tmp_path / "c", seed=1, **sizes))
    assert all(other.get(k) != reference[k] for k in pngs)


def test_ink_polygon_fills_exactly_the_inked_cells_of_every_scan(scans):
    for scan in scans[0]:
        polygon = ink_polygon(scan)
        ink = scan >= INK_THRESHOLD
        assert polygon.ndim == 2 and polygon.shape[1] == 2 and len(polygon) >= 4
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        assert polygon.min(0).tolist() == [cols[0], rows[0]] and polygon.max(0).tolist() == [cols[-1] + 1, rows[-1] + 1]
        filled = np.zeros((128, 128), np.uint8)
        cv2.fillPoly(filled, [polygon.astype(np.int32) * 16], 1)  # as Ultralytics' polygon2mask fills it
        truth = np.kron(ink, np.ones((16, 16), bool))
        assert filled[truth].all()  # every inked cell, every piece
        near_ink = cv2.dilate(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        # Outside the ink, only fillPoly's boundary pixels and, rarely, a 1-px bridge between two separate pieces of
        # ink (crossing at most two cells): a filled hole (one cell at least) would add >= 14 x 14 px.
        assert (filled & ~near_ink).sum() <= 32


def test_seg_scenes_are_the_det_scenes_labelled_with_their_ink(small, scans):
    det, seg, n = small["digits-det"], small["digits-seg"], SMALL["digits-seg"]["imgsz"]
    from ultralytics.data.utils import polygon2mask

    sources = json.loads((seg / "sources.json").read_text())
    assert sources == json.loads((det / "sources.json").read_text())
    assert not (seg / "annotations").exists()
    for split in ("train", "val"):
        for stem, det_rows in read_labels(det, split).items():
            image = (seg / "images" / split / f"{stem}.png").read_bytes()
            assert image == (det / "images" / split / f"{stem}.png").read_bytes()
            lines = (seg / "labels" / split / f"{stem}.txt").read_text().splitlines()
            assert len(lines) == len(det_rows) == len(sources[split][stem])
            for line, det_box, row, obj in zip(lines, pixel_boxes(det_rows, n), det_rows, sources[split][stem]):
                values = line.split()
                assert int(values[0]) == int(row[0]) == scans[1][obj["scan"]]
                coords = np.array(values[1:], float)
                assert len(coords) % 2 == 0 and len(coords) >= 8 and (coords >= 0).all() and (coords <= 1).all()
                points = coords.reshape(-1, 2) * n
                assert np.abs(np.r_[points.min(0), points.max(0)] - det_box).max() < 1.0  # the box rounds outward
                filled = polygon2mask((n, n), [points.ravel()]).astype(bool)
                ink = ink_mask(scans[0][obj["scan"]], obj["square"], n)
                assert filled[ink].all()  # the polygon covers the ink ...
                near_ink = cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                assert (filled & ~near_ink).sum() <= obj["square"][2]  # ... and beyond 1 px of it at most a bridge


def test_resolve_seg_yaml_gives_a_yaml_ultralytics_loads_with_masks(cache, small, tmp_path, monkeypatch):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(cache))
    spec = tmp_path / "seg-small.yaml"
    spec.write_text(yaml.safe_dump({"builder": "digits-seg", "seed": 0, **SMALL["digits-seg"]}))
    resolved = resolve_dataset(spec)
    assert Path(resolved) == small["digits-seg"] / "digits-seg.yaml"  # the cached build is found, not rebuilt
    data = check_det_dataset(resolved, autodownload=False)
    assert data["nc"] == 10 and Path(data["val"]) == small["digits-seg"] / "images" / "val"
    dataset = YOLODataset(img_path=data["val"], data=data, task="segment", imgsz=64, augment=False)
    det = read_labels(small["digits-det"], "val")
    assert len(dataset) == len(det) == SMALL["digits-seg"]["n_val"]
    for i, (stem, rows) in enumerate(det.items()):
        label = dataset.labels[i]
        assert Path(label["im_file"]).stem == stem and len(label["segments"]) == len(rows)
        xywh = label["bboxes"] * 64  # Ultralytics' boxes of the polygons (`segments2boxes`)
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        assert np.abs(boxes - pixel_boxes(rows, 64)).max() < 1.0
        sample = dataset[i]
        assert sample["cls"].shape[0] == len(rows)
        assert set(sample["masks"].unique().tolist()) == set(range(len(rows) + 1))  # background and every instance


def test_resolve_cls_yaml_gives_a_directory_check_cls_dataset_accepts_offline(
    cache, small, scans, tmp_path, monkeypatch
):
    import ultralytics.data.utils as data_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(data_utils, "download", refuse)
    monkeypatch.setattr(data_utils, "safe_download", refuse)
    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(cache))
    spec = tmp_path / "cls-small.yaml"
    spec.write_text(yaml.safe_dump({"builder": "digits-cls", "seed": 0, **SMALL["digits-cls"]}))
    root = small["digits-cls"]
    resolved = resolve_dataset(spec)
    assert resolved == str(root) and resolve_dataset(resolved) == resolved  # a class-folder directory passes through
    data = data_utils.check_cls_dataset(resolved)
    assert data["nc"] == 10 and data["names"] == dict(enumerate(CLASSES))
    sources = json.loads((root / "sources.json").read_text())
    for split in ("train", "val"):
        assert Path(data[split]) == root / split
        assert sorted(p.name for p in (root / split).iterdir()) == CLASSES
        images = {p.stem: p for p in (root / split).glob("*/*.png")}
        assert sorted(images) == sorted(sources[split]) and len(images) == SMALL["digits-cls"][f"n_{split}"]
        assert all(any((root / split / c).iterdir()) for c in CLASSES)  # every class folder non-empty
        for stem, path in images.items():
            (obj,) = sources[split][stem]
            assert path.parent.name == str(scans[1][obj["scan"]])  # the folder is the class of the scan drawn
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["digits-seg", "digits-cls"])
def test_seg_and_cls_train_and_val_use_disjoint_source_scans(name, small):
    sources = json.loads((small[name] / "sources.json").read_text())
    scans = {split: {o["scan"] for objs in sources[split].values() for o in objs} for split in ("train", "val")}
    assert scans["train"] and scans["val"] and not scans["train"] & scans["val"]


@pytest.mark.parametrize("name", DATASETS)
def test_bare_names_and_repository_yamls_resolve_to_the_default_build(name, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(tmp_path))
    target = dataset_dir(name, **BUILDER_KEYS[name])
    assert target.parent == tmp_path
    target.mkdir()
    (target / COMPLETE_MARKER).write_text("{}")  # stands in for a finished default build (seconds to build for real)
    expected = str(target) if name == "digits-cls" else str(target / f"{name}.yaml")
    assert resolve_dataset(name) == resolve_dataset(f"{name}.yaml") == expected
    assert resolve_dataset(REPO / "data" / f"{name}.yaml") == expected


def test_bad_builders_keys_sizes_and_directories_are_refused_naming_the_valid_ones(tmp_path):
    spec = tmp_path / "d.yaml"
    spec.write_text("builder: digits-sgm\n")
    with pytest.raises(ValueError, match=r"builder: digits-sgm.*one of digits-det, digits-seg, digits-cls"):
        resolve_dataset(spec)
    spec.write_text("builder: digits-cls\nimg_size: 32\n")
    with pytest.raises(ValueError, match=r"img_size.*seed, n_train, n_val, imgsz"):
        resolve_dataset(spec)
    with pytest.raises(ValueError, match="'digits-xyz' is not an embedded dataset: choose one of digits-det"):
        build_digits("digits-xyz", root=tmp_path)
    with pytest.raises(ValueError, match=r"n_val=4 is invalid for digits-cls: n_val must be an integer >= 10"):
        build_digits("digits-cls", root=tmp_path, n_train=20, n_val=4)
    with pytest.raises(ValueError, match=r"imgsz=32 is invalid for digits-seg: imgsz must be an integer >= 64"):
        build_digits("digits-seg", root=tmp_path, imgsz=32)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="without a 'train' folder"):
        resolve_dataset(tmp_path / "folder")
    assert not list(tmp_path.glob("digits-*"))  # nothing was built
