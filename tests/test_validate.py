"""Adversarial validation: main BN only, white-box or named transfer attacks, Table-1 files, pycocotools, saved data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from helpers import IMGSZ, save_ckpt
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.nn.tasks import DetectionModel

import yolo_advamd.validate as validate
import yolo_advamd.validators as validators
from yolo_advamd.attacks import DeepFool
from yolo_advamd.checkpoint import load_model
from yolo_advamd.validate import validate_advamd

TOLERANCE = 0.02  # |pycocotools AP - Ultralytics mAP|: both use 101-point interpolation, COCO keeps 100 dets/image


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits):
    """The digits data, stock and amended (poisoned auxiliary BN) checkpoints, an untrained model and a run dir."""
    root = tmp_path_factory.mktemp("validate")
    torch.manual_seed(0)
    untrained = save_ckpt(DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval(), root / "untrained.pt")
    return {**digits, "data": str(digits["data"]), "untrained": untrained, "runs": root / "runs"}


def run(setup, name, **kwargs):
    """Validate the stock checkpoint (unless `model=` is given) at the test size into `runs/<name>`."""
    kwargs = {"model": setup["stock"], "data": setup["data"], "attacks": "", "imgsz": IMGSZ, "batch": 16, **kwargs}
    return validate_advamd(project=str(setup["runs"]), name=name, verbose=False, **kwargs)


def stats(results, column="benign", row=0):
    """Return one run's statistics."""
    return results["rows"][row]["stats"][column]


def test_coco_json_is_scored_by_pycocotools_and_agrees_with_ultralytics_map(setup, monkeypatch):
    """save_json on a COCO-format dataset: COCO results file, pycocotools stats close to Ultralytics', no install."""
    import ultralytics.models.yolo.detect.val as stock_val

    monkeypatch.setattr(stock_val, "check_requirements", lambda *a, **k: pytest.fail(f"requirements checked: {a}"))
    results = run(setup, "coco", save_json=True)
    s = stats(results)
    assert s["metrics/mAP50(B)"] > 0.9  # a working detector, so the comparison means something
    assert abs(s["coco/AP50-95"] - s["metrics/mAP50-95(B)"]) < TOLERANCE
    assert abs(s["coco/AP50"] - s["metrics/mAP50(B)"]) < TOLERANCE
    gt = json.loads((Path(setup["data"]).parent / "annotations" / "instances_val.json").read_text())
    preds = json.loads((Path(results["save_dir"]) / "model" / "benign" / "predictions.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
    assert {p["image_id"] for p in preds} <= {i["id"] for i in gt["images"]}
    assert {p["category_id"] for p in preds} <= {c["id"] for c in gt["categories"]}
    assert "faster_coco_eval" not in sys.modules
    table = (Path(results["save_dir"]) / "results.md").read_text()
    assert "**COCO AP50-95 (%)**" in table and "**mAP50-95 (%)**" in table


def test_no_prediction_at_all_scores_zero_coco_stats_not_gaps(setup):
    """Ultralytics skips scoring an empty predictions JSON: the COCO statistics are then 0 and the table has no gap."""
    results = run(setup, "empty", save_json=True, conf=1.0)  # no score reaches 1
    assert stats(results)["coco/AP50-95"] == 0 and stats(results)["metrics/mAP50-95(B)"] == 0
    assert "nan" not in (Path(results["save_dir"]) / "results.md").read_text()


def test_dataset_without_coco_json_is_scored_against_its_yolo_labels(setup, tmp_path):
    """Without a COCO JSON, pycocotools scores against the labels converted by Ultralytics, and still agrees."""
    cfg = yaml.safe_load(Path(setup["data"]).read_text())
    del cfg["coco_json"]
    data = tmp_path / "no-json.yaml"
    data.write_text(yaml.safe_dump(cfg))
    results = run(setup, "labels", data=str(data), save_json=True)
    s = stats(results)
    assert abs(s["coco/AP50-95"] - s["metrics/mAP50-95(B)"]) < TOLERANCE
    assert (Path(results["save_dir"]) / "model" / "benign" / "ground_truth.json").is_file()


def test_amended_model_is_validated_and_attacked_through_its_main_bn_only(setup):
    """The amended checkpoint's auxiliary BN is NaN: identical finite results to the stock weights prove it unused."""
    results = run(setup, "amended", model=setup["amended"], baseline=setup["stock"], attacks="fgsm", eps=0.05)
    for column in ("benign", "fgsm eps=0.05"):
        assert np.isfinite(stats(results, column)["metrics/mAP50-95(B)"])
        assert stats(results, column) == stats(results, column, row=1)
        assert all(v == 0 for v in results["delta"][column].values())


def test_white_box_attacks_lower_map_and_the_table_is_written_like_table_1(setup):
    """FGSM and PGD against the model itself lower its mAP, more with a larger eps; CSV, JSON and Markdown written."""
    results = run(setup, "table", attacks="fgsm,pgd", eps="0.01,0.1", steps=3, baseline=setup["untrained"])
    benign = stats(results)["metrics/mAP50-95(B)"]
    for attack in ("fgsm", "pgd"):
        small, large = (stats(results, f"{attack} eps={e}")["metrics/mAP50-95(B)"] for e in (0.01, 0.1))
        assert large < small < benign and large < benign - 0.3
    save_dir = Path(results["save_dir"])
    with open(save_dir / "results.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    columns = ["benign", "fgsm eps=0.01", "fgsm eps=0.1", "pgd eps=0.01", "pgd eps=0.1"]
    assert rows[0] == ["metric", "model", "attacked model", *columns]
    assert [r[:2] for r in rows[1:4]] == [
        ["mAP50-95", str(setup["stock"])],
        ["mAP50-95", f"baseline: {setup['untrained']}"],
        ["mAP50-95", f"Δ ({setup['stock']} − {setup['untrained']})"],
    ]
    assert rows[1][2] == f"{setup['stock']} (white-box)" and rows[2][2] == f"{setup['untrained']} (white-box)"
    assert float(rows[1][3]) == pytest.approx(100 * benign, abs=0.01)
    saved = json.loads((save_dir / "results.json").read_text())
    assert saved["columns"] == columns and saved["settings"]["steps"] == 3
    assert "| model | attacked model | benign |" in (save_dir / "results.md").read_text()


def test_deepfool_is_exact_by_default_and_fast_with_deepfool_fast_from_the_api_and_the_cli(setup, monkeypatch):
    """The API runs the exact DeepFool by default and the fast one with deepfool=fast; val_advamd.py deepfool=fast
    gives the API's fast table."""
    steps = []
    for variant in ("fast", "exact"):
        method = getattr(DeepFool, f"{variant}_step")
        spy = lambda self, *a, _step=method, _name=variant: steps.append(_name) or _step(self, *a)  # noqa: E731
        monkeypatch.setattr(DeepFool, f"{variant}_step", spy)
    column = "deepfool eps=0.0313725"
    exact = run(setup, "deepfool-exact", attacks="deepfool", eps="8/255")
    assert steps and set(steps) == {"exact"}
    steps.clear()
    fast = run(setup, "deepfool-fast", attacks="deepfool", eps="8/255", deepfool="fast")
    assert steps and set(steps) == {"fast"}
    assert stats(fast, column)["metrics/mAP50-95(B)"] < stats(fast)["metrics/mAP50-95(B)"]
    cli = [
        sys.executable,
        str(Path(validate.__file__).parents[1] / "val_advamd.py"),
        f"model={setup['stock']}",
        f"data={setup['data']}",
        "attacks=deepfool",
        "eps=8/255",
        "deepfool=fast",
        f"imgsz={IMGSZ}",
        f"project={setup['runs']}",
        "name=deepfool-cli",
    ]
    subprocess.run(cli, check=True, capture_output=True, timeout=600)
    saved = json.loads((setup["runs"] / "deepfool-cli" / "results.json").read_text())
    assert saved["settings"]["deepfool"] == "fast"
    assert saved["rows"][0]["stats"][column] == pytest.approx(stats(fast, column))
    assert stats(exact, column)["metrics/mAP50-95(B)"] < stats(exact)["metrics/mAP50-95(B)"]


def test_attacks_use_the_evaluated_model_unless_attack_model_names_another(setup, monkeypatch):
    """White-box: attacks differentiate the evaluated weights; transfer: those of attack_model, as the table says."""
    seen = []

    attack_batch = validators.attack_batch

    def spy(attack, model, batch, terms="all"):
        seen.append(next(model.parameters()).detach().clone())
        return attack_batch(attack, model, batch, terms)

    monkeypatch.setattr(validators, "attack_batch", spy)
    first_weight = {k: next(load_model(setup[k], "test")[0].parameters()) for k in ("stock", "untrained")}
    white = run(setup, "white", attacks="fgsm", eps=0.01)
    assert seen and all(torch.equal(w, first_weight["stock"]) for w in seen)
    seen.clear()
    transfer = run(setup, "transfer", attacks="fgsm", eps=0.01, attack_model=setup["untrained"])
    assert seen and all(torch.equal(w, first_weight["untrained"]) for w in seen)
    assert transfer["rows"][0]["attacked_by"] == f"{setup['untrained']} (transfer)"
    assert stats(transfer, "fgsm eps=0.01") != stats(white, "fgsm eps=0.01")


def wide_copy(data: str, root: Path) -> Path:
    """Copy the val scenes as 64x96 images (gray 114 band on the right), labels moved with them; return its YAML."""
    source = Path(data).parent
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for f in sorted((source / "images" / "val").glob("*.png")):
        image = cv2.imread(str(f))
        wide = cv2.copyMakeBorder(image, 0, 0, 0, 32, cv2.BORDER_CONSTANT, value=(114,) * 3)
        cv2.imwrite(str(root / "images" / f.name), wide)
        labels = np.loadtxt(source / "labels" / "val" / f"{f.stem}.txt", ndmin=2)
        labels[:, [1, 3]] *= 64 / 96  # x and w, normalized by the new width
        np.savetxt(root / "labels" / f"{f.stem}.txt", labels, fmt="%g")
    (root / "wide.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": {i: str(i) for i in range(10)}})
    )
    return root / "wide.yaml"


def test_saved_adversarial_copy_is_the_letterboxed_input_in_yolo_layout_and_reproduces_the_map(setup, tmp_path):
    """save_adv: 64x96 scenes letterboxed to 96x96 (16 px bands above and below), attacked, saved with moved labels.

    The PNGs stay within eps of the benign letterboxed input (plus PNG rounding), the labels follow the letterbox,
    and stock Ultralytics validating the saved copy finds the mAP the adversarial column reported.
    """
    eps, data = 0.05, wide_copy(setup["data"], tmp_path / "wide")
    results = run(setup, "adv", data=str(data), attacks="fgsm", eps=eps, imgsz=96, save_adv=True)
    adv = Path(results["save_dir"]) / "model" / f"fgsm_eps={eps}" / "adversarial"
    files = sorted((adv / "images").glob("*.png"))
    assert len(files) == 16
    diffs = []
    for f in files:
        saved, wide = cv2.imread(str(f)).astype(int), cv2.imread(str(data.parent / "images" / f.name)).astype(int)
        assert saved.shape == (96, 96, 3)
        diffs.append(np.abs(saved[16:80] - wide))  # the letterbox adds 16 px bands above and below
        assert np.abs(saved[:16] - 114).max() <= round(eps * 255) + 1  # the band: gray 114, perturbed too
        labels, expected = (np.loadtxt(d / f"{f.stem}.txt", ndmin=2) for d in (adv / "labels", data.parent / "labels"))
        expected[:, 2] = (expected[:, 2] * 64 + 16) / 96  # y in the 96 px frame
        expected[:, 4] *= 64 / 96  # h
        assert np.allclose(labels, expected, atol=1e-5)
    assert max(d.max() for d in diffs) <= round(eps * 255) + 1 and np.mean([d.mean() for d in diffs]) > 1
    ours = stats(results, f"fgsm eps={eps}")["metrics/mAP50-95(B)"]
    model, *_ = load_model(setup["stock"], "test")
    args = {"data": str(adv / "data.yaml"), "imgsz": 96, "batch": 16, "plots": False}
    again = DetectionValidator(args=args)(model=model)  # stock Ultralytics reading the saved copy
    assert stats(results)["metrics/mAP50-95(B)"] > ours + 0.1  # the attack did something measurable
    assert again["metrics/mAP50-95(B)"] == pytest.approx(ours, abs=0.03)  # PNG rounding moves pixels by <= 0.5/255


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"attacks": "fgsmx"}, ValueError, "attacks=fgsmx is not an attack"),
        ({"attacks": "fgsm", "eps": 2}, ValueError, r"eps=2.0 is outside \(0, 1\]"),
        ({"attacks": "fgsm", "eps": "0.01,a"}, ValueError, "not a comma-separated list"),
        ({"confx": 0.1}, SyntaxError, "'confx' is not a valid YOLO argument"),
        ({"model": "best.onnx"}, FileNotFoundError, "model=best.onnx is not a .pt checkpoint on disk"),
        ({"baseline": "missing.pt"}, FileNotFoundError, "baseline=missing.pt is not on disk and yolo-advamd never"),
        ({"attacks": "fgsm", "attack_terms": "boxes"}, ValueError, "attack_terms=boxes is not valid"),
        ({"attacks": "fgsm", "deepfool": "exact"}, ValueError, "deepfool=exact chooses DeepFool's variant: add"),
        ({"attacks": "deepfool", "deepfool": "slow"}, ValueError, "deepfool=slow is not valid: choose fast"),
    ],
)
def test_bad_settings_are_refused_before_any_work(setup, kwargs, error, match):
    """Bad attack names, budgets, keys and model files fail at once, naming the value and the fix; no run dir made."""
    with pytest.raises(error, match=match):
        run(setup, "bad", **kwargs)
    assert not (setup["runs"] / "bad").exists()
