"""attack(): adversarial images at their original size from any Ultralytics detector, saved files that reproduce it."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import IMGSZ, digits_detector, save_ckpt
from ultralytics import YOLO
from ultralytics.data.augment import LetterBox
from ultralytics.nn.tasks import PoseModel
from ultralytics.utils.metrics import box_iou

from yolo_advamd.attack_api import attack
from yolo_advamd.cli import main_attack as main
from yolo_advamd.images import letterbox

EPS = 8 / 255
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits):
    """The digits detector's stock checkpoint, its data YAML and a folder of 4 val images the clean model detects in."""
    images = tmp_path_factory.mktemp("images")
    model = YOLO(str(digits["stock"]))
    scenes = sorted((digits["data"].parent / "images" / "val").glob("*.png"))
    for file in [f for f in scenes if len(model.predict(str(f), imgsz=IMGSZ, verbose=False)[0].boxes)][:4]:
        shutil.copy(file, images / file.name)
    return {**digits, "images": images, "runs": tmp_path_factory.mktemp("runs")}


def affected(clean, adv) -> bool:
    """True if a detection was lost or made up: a box on one side has no same-class IoU >= 0.5 match on the other."""
    if not len(clean.boxes) or not len(adv.boxes):
        return len(clean.boxes) != len(adv.boxes)
    match = (box_iou(clean.boxes.xyxy, adv.boxes.xyxy) >= 0.5) & (clean.boxes.cls[:, None] == adv.boxes.cls[None])
    return bool((~match.any(1)).any() or (~match.any(0)).any())


def same_boxes(a, b) -> bool:
    """True if two Results hold the same detections."""
    return a.boxes.data.shape == b.boxes.data.shape and torch.allclose(a.boxes.data, b.boxes.data, atol=1e-4)


@pytest.mark.parametrize("objective", ["loss", "cls", "vanish"])
def test_saved_pngs_reproduce_the_attack_within_the_budget(setup, objective):
    """predict() on the saved PNGs gives the attack's `after` results, worse than on the originals; L-inf <= eps."""
    model = YOLO(str(setup["stock"]))
    results = attack(
        model,
        setup["images"],
        method="pgd",
        eps=EPS,
        objective=objective,
        imgsz=IMGSZ,
        save=True,
        project=str(setup["runs"]),
        name=objective,
        verbose=False,
    )
    assert len(results) == 4
    hits = []
    for r in results:
        orig = cv2.imread(r.path)
        saved = cv2.imread(str(r.files["adversarial"]))
        assert saved.shape == orig.shape and np.array_equal(saved, r.adv_img)
        assert np.abs(saved.astype(int) - orig).max() <= round(EPS * 255)  # eps*255 = 8 exactly, rounding adds none
        assert np.array_equal(r.delta, saved.astype(np.int16) - orig)
        clean, again = (YOLO(str(setup["stock"])).predict(f, imgsz=IMGSZ, verbose=False)[0] for f in (r.path, saved))
        assert same_boxes(clean, r.before) and same_boxes(again, r.after)
        assert len(clean.boxes) > 0
        hits.append(affected(clean, again))
        if objective == "vanish":
            assert len(again.boxes) == 0
        rows = list(csv.DictReader(open(r.files["csv"])))
        assert rows[0]["stage"] == "summary" and float(rows[0]["linf"]) == pytest.approx(8 / 255, abs=1e-6)
        assert [row["stage"] for row in rows[1:]] == ["before"] * len(clean.boxes) + ["after"] * len(again.boxes)
        assert cv2.imread(str(r.files["compare"])).shape[1] > 3 * orig.shape[1]  # three panels side by side
    assert len(list(csv.DictReader(open(results[0].files["adversarial"].parent / "summary.csv")))) == 4
    # random sign noise of the same budget changes the detections of none of these images
    assert sum(hits) >= {"loss": 3, "cls": 2, "vanish": 4}[objective]  # the class term leaves some confident digits


def test_source_may_be_a_file_a_glob_or_a_list_of_paths(setup):
    """Every path form of `source` attacks exactly the images it names, in order, within the budget."""
    files = sorted(setup["images"].glob("*.png"))
    for source, expected in (
        (str(files[0]), files[:1]),
        (str(setup["images"] / "*.png"), files),
        ([str(files[2]), str(files[1])], [files[2], files[1]]),
    ):
        results = attack(str(setup["stock"]), source, method="fgsm", eps=EPS, imgsz=IMGSZ, verbose=False)
        assert [Path(r.path) for r in results] == expected, source
        for r in results:
            assert np.abs(r.adv_img.astype(int) - cv2.imread(r.path)).max() <= round(EPS * 255)


def test_yolo_object_path_and_detection_model_are_attacked_and_left_unchanged(setup):
    """A frozen YOLO(), stock and amended checkpoint paths, a train-mode DetectionModel: attacked, none changed."""
    kwargs = {"source": setup["images"], "method": "fgsm", "eps": EPS, "imgsz": IMGSZ, "verbose": False}
    model = YOLO(str(setup["stock"]))
    model.model.requires_grad_(False)  # as older Ultralytics' YOLO() leaves it (ultralytics#14907); 8.4.190 does not
    net = digits_detector(setup["stock"].parent).train()  # requires_grad=True, train mode: must stay so
    snapshots = []
    for m in (model.model, net):
        flags = [p.requires_grad for p in m.parameters()]
        snapshots.append(({k: v.clone() for k, v in m.state_dict().items()}, flags, [x.training for x in m.modules()]))
    assert not any(snapshots[0][1]) and any(snapshots[1][1])
    by_yolo, by_path, by_net = attack(model, **kwargs), attack(str(setup["stock"]), **kwargs), attack(net, **kwargs)
    by_amended = attack(str(setup["amended"]), **kwargs)  # dual BN with a NaN auxiliary BN: attacked via the main BN
    for a, b, c in zip(by_yolo, by_path, by_amended):
        assert np.array_equal(a.adv_img, b.adv_img) and np.array_equal(a.adv_img, c.adv_img)
    assert all(np.abs(r.delta).max() == 8 and np.abs(r.delta).sum() > 0 for r in by_net)
    for m, (state, flags, modes) in zip((model.model, net), snapshots):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())  # weights and BN statistics
        assert [p.requires_grad for p in m.parameters()] == flags and [x.training for x in m.modules()] == modes
        assert all(p.grad is None for p in m.parameters())


def test_ground_truth_targets_with_data_and_pseudo_targets_without(setup):
    """data= and split=: each image's YOLO labels (in pixels) are the targets; without: the clean predictions."""
    with_labels = attack(
        str(setup["stock"]), data=str(setup["data"]), split="val", method="fgsm", eps=EPS, imgsz=IMGSZ, verbose=False
    )
    assert len(with_labels) == 16  # the whole val split is the source
    for r in with_labels:
        label = np.loadtxt(Path(r.path.replace("/images/", "/labels/")).with_suffix(".txt"), ndmin=2)
        h, w = r.orig_img.shape[:2]
        x, y, bw, bh = label[:, 1:].T * [[w], [h], [w], [h]]
        assert r.targets["source"] == "labels" and r.targets["cls"].tolist() == label[:, 0].astype(int).tolist()
        np.testing.assert_allclose(
            r.targets["xyxy"], np.stack([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], 1), atol=1e-3
        )
    assert sum(affected(r.before, r.after) for r in with_labels) >= 8  # same-budget random sign noise: none of 16
    for r in attack(str(setup["stock"]), setup["images"], method="fgsm", eps=EPS, imgsz=IMGSZ, verbose=False):
        assert r.targets["source"] == "predictions" and r.targets["cls"].tolist() == r.before.boxes.cls.int().tolist()
        np.testing.assert_allclose(r.targets["xyxy"], r.before.boxes.xyxy.numpy(), atol=1e-3)  # unfused vs fused copy


def test_image_of_another_size_is_letterboxed_differentiably_and_attacked_at_its_size(setup, tmp_path):
    """A 200x130 scene: the model's input is Ultralytics' letterbox, δ lives at 200x130, and the PNG reproduces it."""
    scene = cv2.resize(cv2.imread(str(sorted(setup["images"].glob("*.png"))[0])), (200, 130))
    params = LetterBox(IMGSZ, auto=True, stride=32).get_params({"img": scene})
    x = torch.from_numpy(scene[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    ours = letterbox(x, params)[0].permute(1, 2, 0).numpy()[..., ::-1] * 255
    theirs = LetterBox(IMGSZ, auto=True, stride=32)(image=scene)  # what predict() feeds the model: 64x64
    assert ours.shape == theirs.shape == (64, 64, 3) and np.abs(ours - theirs).max() <= 1  # cv2 rounds to uint8

    from_array, from_tensor = (
        attack(
            str(setup["stock"]),
            s,
            method="pgd",
            eps=EPS,
            objective="vanish",
            imgsz=IMGSZ,
            save=True,
            project=str(tmp_path),
            name="x",
            exist_ok=True,
            verbose=False,
        )[0]
        for s in (scene, x)
    )
    assert np.array_equal(from_array.adv_img, from_tensor.adv_img) and from_array.path == "image0.jpg"
    assert from_array.adv_img.shape == (130, 200, 3) and np.abs(from_array.delta).max() == 8
    again = YOLO(str(setup["stock"])).predict(str(from_array.files["adversarial"]), imgsz=IMGSZ, verbose=False)[0]
    assert len(from_array.before.boxes) > 0 and len(again.boxes) == 0 and same_boxes(again, from_array.after)


def test_bad_inputs_fail_with_one_clear_error_and_keep_written_files(setup, tmp_path):
    """Unreadable image (earlier files kept), eps out of range, a pose checkpoint, empty source."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sorted(setup["images"].glob("*.png"))[0], folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    kwargs = {"method": "fgsm", "eps": EPS, "imgsz": IMGSZ, "verbose": False}
    with pytest.raises(ValueError, match=r"b\.png cannot be read"):
        attack(str(setup["stock"]), folder, save=True, project=str(tmp_path), name="kept", **kwargs)
    assert (tmp_path / "kept" / "a.png").is_file() and (tmp_path / "kept" / "a.csv").is_file()
    for eps in (0, 1.5, -0.1, "9/255*2"):
        with pytest.raises(ValueError, match=r"is outside \(0, 1\]" if eps != "9/255*2" else "is not a number"):
            attack(str(setup["stock"]), folder, **{**kwargs, "eps": eps})
    pose = save_ckpt(PoseModel("yolov8n-pose.yaml", nc=1, verbose=False), tmp_path / "pose.pt")
    with pytest.raises(ValueError, match="is a pose model: attack supports YOLO detect, segment, classify models"):
        attack(str(pose), folder, **kwargs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No images or videos found"):
        attack(str(setup["stock"]), tmp_path / "empty", **kwargs)
    with pytest.raises(ValueError, match="is empty"):
        attack(str(setup["stock"]), [], **kwargs)


def test_cli_writes_pngs_side_by_side_jpgs_and_csvs_and_names_bad_keys(setup, tmp_path, capsys, monkeypatch):
    """`python attack.py key=value`: the run directory's files; an unknown key is refused with a suggestion."""
    monkeypatch.setenv("YOLO_ADVAMD_THREADS", "1")  # two threads on two shared cores run 10x slower here
    cmd = [
        sys.executable,
        str(ROOT / "attack.py"),
        f"model={setup['stock']}",
        f"source={setup['images']}",
        "method=fgsm",
        "eps=0.03",
        f"imgsz={IMGSZ}",
        f"project={tmp_path}",
        "name=exp",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    stems = sorted(f.stem for f in setup["images"].glob("*.png"))
    for suffix in (".png", "_compare.jpg", ".csv"):
        files = sorted(f.name for f in (tmp_path / "exp").glob(f"*{suffix}") if f.name != "summary.csv")
        assert files == [s + suffix for s in stems]
    assert len(list(csv.DictReader(open(tmp_path / "exp" / "summary.csv")))) == len(stems)
    assert main([f"model={setup['stock']}", f"source={setup['images']}", "epss=0.1"]) == 2
    assert "'epss' is not a valid argument. Did you mean eps=8/255" in capsys.readouterr().err
    assert main([f"model={setup['stock']}", f"source={setup['images']}", "eps=2", f"imgsz={IMGSZ}"]) == 2
    assert "attack.py: error: eps=2 is outside (0, 1]" in capsys.readouterr().err
