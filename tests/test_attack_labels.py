"""attack_labels=pred: attacks pushed against the attacked model's own predictions (no label to leak), for every task,
in training and validation; flips and Ā still count against the ground truth."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_unchanged, calibrate, folder_batch, snapshot, tiny, val_batch
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_advamd.attacks import build_attack
from yolo_advamd.attacks.objectives import objective_for
from yolo_advamd.attacks.targets import predicted_targets
from yolo_advamd.cfg import resolve_advamd_cfg
from yolo_advamd.checkpoint import attack_copy, load_model
from yolo_advamd.cli import train
from yolo_advamd.stage import AttackStage
from yolo_advamd.vulnerability import Vulnerability

ROOT = Path(__file__).parents[1]
EPS = 0.03


def victim(ckpt) -> torch.nn.Module:
    """The fp32 eval-mode copy of a checkpoint that validation and the attack API attack."""
    net, _, train_args = load_model(str(ckpt), "test")
    return attack_copy(net, train_args, torch.device("cpu"))


def fgsm_stage(model, **kw) -> AttackStage:
    """An FGSM stage attacking the frozen `model` (target mode)."""
    return AttackStage(build_attack("fgsm", eps=EPS), 0.5, "target", target=model, **kw)


def test_predicted_targets_are_the_detections_ultralytics_predict_gives(digits):
    """The targets are the post-NMS detections above attack_conf of Ultralytics' own predictor, in the batch layout."""
    model, batch = victim(digits["stock"]), val_batch(digits["data"])
    for conf in (0.25, 0.6):
        targets = predicted_targets(model, batch, conf)
        results = YOLO(str(digits["stock"])).predict(batch["im_file"], imgsz=64, conf=conf, verbose=False)
        assert len(targets["cls"]) == sum(len(r.boxes) for r in results) > len(batch["im_file"])  # objects found
        for i, r in enumerate(results):
            mine = targets["batch_idx"] == i
            order = r.boxes.xywhn[:, 0].argsort()  # NMS orders ties by floating-point noise: compare by position
            theirs = torch.cat([r.boxes.cls[order, None], r.boxes.xywhn[order]], 1)
            ours = torch.cat([targets["cls"][mine], targets["bboxes"][mine]], 1)
            torch.testing.assert_close(ours[ours[:, 1].argsort()], theirs, atol=2e-3, rtol=0)
        assert torch.equal(targets["batch_idx"], targets["batch_idx"].sort().values)  # sorted as collate makes it
        assert targets["img"] is batch["img"] and targets["im_file"] == batch["im_file"]


def test_a_model_whose_predictions_are_the_ground_truth_gets_the_same_attack_with_gt_and_pred(digits):
    """gt and pred differ only in the targets: where the labels are the model's predictions, δ is the same; on the real
    ground truth (other boxes) it is not."""
    model, batch = victim(digits["stock"]), val_batch(digits["data"])
    as_predicted = predicted_targets(model, batch)
    gt = fgsm_stage(model)(as_predicted)["img_adv"]
    pred = fgsm_stage(model, attack_labels="pred")
    torch.testing.assert_close(pred(as_predicted)["img_adv"], gt, atol=0, rtol=0)
    torch.testing.assert_close(pred(batch)["img_adv"], gt, atol=0, rtol=0)  # the true labels are not read
    assert not torch.equal(fgsm_stage(model)(batch)["img_adv"], gt)


def test_flips_count_against_the_ground_truth_with_pred_targets(digits):
    """Ā's statistics see every ground-truth object, not the predicted ones (here: fewer at a high attack_conf)."""
    model, batch = victim(digits["stock"]), val_batch(digits["data"])
    counted = {}
    for labels in ("gt", "pred"):
        vuln = Vulnerability(10)
        fgsm_stage(model, attack_labels=labels, attack_conf=0.9, vulnerability=vuln, collect_stats=True)(batch)
        counted[labels] = vuln
    truth = torch.bincount(batch["cls"].view(-1).long(), minlength=10)
    assert len(predicted_targets(model, batch, 0.9)["cls"]) < len(batch["cls"])  # the predictions are other objects
    assert torch.equal(counted["pred"].seen, truth) and torch.equal(counted["gt"].seen, truth)
    assert counted["pred"].counts.sum() > 0  # benign-correct objects were counted, before and after the attack


def test_prediction_pass_on_the_model_being_trained_leaves_it_unchanged():
    """On a train-mode model (attack_model=current) the predictions use its batch statistics and change nothing."""
    torch.manual_seed(0)
    model = calibrate(DetectionModel("yolov8n.yaml", nc=10, verbose=False), 64)
    model.args = get_cfg()
    with torch.no_grad():  # a head that detects: every class above 0.25 somewhere
        model.model[-1].cv3[0][-1].bias.fill_(-0.5)
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    targets = predicted_targets(model, {"img": img})
    assert_unchanged(model, before)
    assert model.training and model.model[-1].training
    assert len(targets["cls"]) > 0 and targets["bboxes"].min() >= 0 and targets["bboxes"].max() <= 1


def test_pred_does_not_reuse_the_benign_gradient_and_attacks_the_predictions():
    """FGSM on the current model normally takes the benign pass's gradient (on the ground truth); with pred it cannot,
    and the stage's δ is the FGSM of the loss on the model's own predictions."""
    torch.manual_seed(0)
    model = calibrate(DetectionModel("yolov8n.yaml", nc=10, verbose=False), 64)
    model.args = get_cfg()
    with torch.no_grad():
        model.model[-1].cv3[0][-1].bias.fill_(-0.5)
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.6, 0.2, 0.4]])
    batch = {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "cls": torch.tensor([[1.0], [2.0]]),
        "bboxes": boxes,
        "batch_idx": torch.tensor([0.0, 1.0]),
    }
    stage = AttackStage(build_attack("fgsm", eps=EPS), 0.5, "current", model=model, attack_labels="pred")
    assert not stage.reuses_gradient
    assert AttackStage(build_attack("fgsm", eps=EPS), 0.5, "current", model=model).reuses_gradient
    with pytest.raises(ValueError, match="cannot reuse a training gradient"):
        stage(batch, grad=torch.ones_like(batch["img"]))
    targets = predicted_targets(model, batch)
    assert not torch.equal(targets["cls"], batch["cls"])
    expected = build_attack("fgsm", eps=EPS)(batch["img"], objective_for(model, targets))
    torch.testing.assert_close(stage(batch)["img_adv"], expected.adv, atol=0, rtol=0)


def test_classifier_targets_are_its_top1(fitted_tasks):
    """A classifier's target is its predicted class: δ on a batch labelled with the top-1 equals δ with pred."""
    d = fitted_tasks["classify"]
    model, batch = victim(d["ckpt"]), folder_batch(d["data"])
    top1 = model(batch["img"])[1].argmax(1)
    wrong = {**batch, "cls": (top1 + 1) % 10}  # every ground-truth label differs from the prediction
    assert torch.equal(predicted_targets(model, wrong)["cls"], top1)
    pred = fgsm_stage(model, attack_labels="pred")(wrong)["img_adv"]
    torch.testing.assert_close(pred, fgsm_stage(model)({**batch, "cls": top1})["img_adv"], atol=0, rtol=0)
    assert not torch.equal(pred, fgsm_stage(model)(wrong)["img_adv"])


@pytest.mark.parametrize("overlap", [True, False])
def test_segmentation_targets_carry_the_predicted_masks_in_the_batch_layout(fitted_tasks, overlap):
    """A segmentation model's targets hold its masks at the batch's mask size and layout, each inside its box, and
    the attack on them equals the attack on a batch labelled with them."""
    d = fitted_tasks["segment"]
    model = victim(d["ckpt"])
    model.args.overlap_mask = overlap
    model.criterion = None  # rebuilt with this layout
    batch = val_batch(d["data"], "segment", overlap_mask=overlap)
    targets = predicted_targets(model, batch)
    n = len(targets["cls"])
    assert n > len(batch["im_file"])
    masks = targets["masks"]
    h, w = batch["masks"].shape[-2:]
    if overlap:
        assert masks.shape == (len(batch["im_file"]), h, w)
        for i in range(len(batch["im_file"])):
            assert masks[i].max() <= (targets["batch_idx"] == i).sum()
        assert targets["sem_masks"].shape == batch["sem_masks"].shape
        per_object = [
            masks[int(b)] == 1 + int((targets["batch_idx"][:k] == b).sum()) for k, b in enumerate(targets["batch_idx"])
        ]
    else:
        assert masks.shape == (n, h, w)
        per_object = list(masks.bool())
    for m, box in zip(per_object, targets["bboxes"]):  # inside its box (at mask resolution, one cell of slack)
        ys, xs = m.nonzero(as_tuple=True)
        if len(xs):
            assert xs.min() >= (box[0] - box[2] / 2) * w - 1 and xs.max() <= (box[0] + box[2] / 2) * w + 1
            assert ys.min() >= (box[1] - box[3] / 2) * h - 1 and ys.max() <= (box[1] + box[3] / 2) * h + 1
    assert sum(bool(m.any()) for m in per_object) > n // 2
    gt = fgsm_stage(model)(targets)["img_adv"]
    torch.testing.assert_close(fgsm_stage(model, attack_labels="pred")(batch)["img_adv"], gt, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("attack_labels", "truth", "attack_labels=truth is not valid: choose gt"),
        ("attack_conf", 1.5, "attack_conf=1.5 is outside (0, 1)"),
        ("attack_conf", "high", "attack_conf=high is outside (0, 1)"),
    ],
)
def test_bad_attack_labels_are_refused_by_name(key, value, message):
    with pytest.raises(ValueError) as e:
        resolve_advamd_cfg({key: value})
    assert message in str(e.value)


@pytest.mark.parametrize("program", ["train_advamd.py", "val_advamd.py"])
def test_cli_refuses_bad_attack_labels_before_any_work(tmp_path, digits, program):
    model = ["model=yolov8n.yaml"] if program == "train_advamd.py" else [f"model={digits['stock']}"]
    r = subprocess.run(
        [sys.executable, str(ROOT / program), *model, "attack_labels=truth", f"project={tmp_path}/runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "attack_labels=truth is not valid" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "segment", "classify"])
def test_training_with_pred_targets_runs_for_every_task(tmp_path, monkeypatch, tiny_data, task):
    """`train_advamd.py attack_labels=pred`: every task trains its three views on attacks made from its predictions."""
    model = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "classify": "yolov8n-cls.yaml"}[task]
    data = {"detect": tiny_data}
    if task != "detect":
        monkeypatch.setenv("YOLO_ADVAMD_DATA", str(tmp_path / "cache"))
        builder = f"builder: digits-{task[:3].replace('cla', 'cls')}\nseed: 3\nn_train: 20\nn_val: 10\nimgsz: 64\n"
        (tmp_path / "data.yaml").write_text(builder)
        data[task] = str(tmp_path / "data.yaml")
    calls = []
    import yolo_advamd.stage as stage_module

    real = stage_module.attack_targets
    monkeypatch.setattr(stage_module, "attack_targets", lambda *a: calls.append(a[2]) or real(*a))
    trainer = train(tiny(tmp_path, data[task], task, model=model, attack_labels="pred", fraction=0.5))
    assert trainer.stage.attack_labels == "pred" and not trainer.stage.reuses_gradient
    assert calls and set(calls) == {"pred"}
    assert (trainer.save_dir / "weights" / "last.pt").is_file() and torch.isfinite(trainer.abar).all()


@pytest.mark.parametrize("task", ["detect", "classify"])
def test_validation_attacks_the_predictions_of_the_attacked_model(digits, fitted_tasks, tmp_path, task):
    """With attack_labels=pred the validator's adversarial images are the attack on the model's predictions."""
    from yolo_advamd.validators import VALIDATORS

    d = {"detect": {**digits, "ckpt": digits["stock"], "imgsz": 64}, "classify": fitted_tasks["classify"]}[task]
    model = victim(d["ckpt"])
    batch = val_batch(d["data"]) if task == "detect" else folder_batch(d["data"])
    for labels, targets in (("gt", batch), ("pred", predicted_targets(model, batch, 0.5))):
        validator = VALIDATORS[task](
            save_dir=tmp_path,
            args={"data": str(d["data"]), "imgsz": d["imgsz"]},
            attack=build_attack("fgsm", eps=EPS),
            attack_model=model,
            attack_labels=labels,
            attack_conf=0.5,
        )
        expected = build_attack("fgsm", eps=EPS)(batch["img"], objective_for(model, targets))
        torch.testing.assert_close(validator.adversarial(batch), expected.adv, atol=0, rtol=0)


def test_val_cli_with_pred_targets_scores_on_the_ground_truth(tmp_path, digits):
    """`val_advamd.py attack_labels=pred`: the attacks on the model's own predictions still lower its mAP against
    the ground truth, and the run's settings say which targets were used."""
    import json

    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "val_advamd.py"),
            f"model={digits['stock']}",
            f"data={digits['data']}",
            "attacks=fgsm",
            "eps=8/255",
            "imgsz=64",
            "attack_labels=pred",
            "attack_conf=0.5",
            f"project={tmp_path}",
            "name=val",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads((tmp_path / "val" / "results.json").read_text())
    assert out["settings"]["attack_labels"] == "pred" and out["settings"]["attack_conf"] == 0.5
    stats = out["rows"][0]["stats"]
    assert stats["fgsm eps=0.0313725"]["metrics/mAP50-95(B)"] < stats["benign"]["metrics/mAP50-95(B)"] - 0.1
