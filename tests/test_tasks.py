"""AdvAmd for every task the paper covers: segmentation and classification train, validate under attack, export and
are attacked like detection."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import WITHOUT_ADVAMD, folder_batch, results, val_batch
from ultralytics import YOLO

from yolo_advamd.attack_api import attack
from yolo_advamd.cli import train
from yolo_advamd.export import export_model, pickled_globals
from yolo_advamd.nn.dual_bn import DualBatchNorm2d
from yolo_advamd.validate import validate_advamd

TESTS = Path(__file__).parent
TASKS = {  # task: (model YAML, builder YAML, image size, benign loss columns, headline metric)
    "segment": (
        "yolov8n-seg.yaml",
        "builder: digits-seg\nseed: 3\nn_train: 16\nn_val: 8\nimgsz: 64\n",
        64,
        ["box_loss", "seg_loss", "cls_loss", "dfl_loss", "sem_loss"],
        "metrics/mAP50-95(M)",
    ),
    "classify": (
        "yolov8n-cls.yaml",
        "builder: digits-cls\nseed: 3\nn_train: 20\nn_val: 10\nimgsz: 32\n",
        32,
        ["loss"],
        "metrics/accuracy_top1",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_offline_with_three_views_an_aux_bn_and_abar(tmp_path, monkeypatch, task):
    """`train_advamd.py model=yolov8n-seg.yaml data=...`: the task comes from the model, every AdvAmd part runs."""
    model, builder, imgsz, benign, _ = TASKS[task]
    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(tmp_path / "cache"))
    (tmp_path / "data.yaml").write_text(builder)
    trainer = train(
        {
            "model": model,
            "data": str(tmp_path / "data.yaml"),
            "epochs": 1,
            "imgsz": imgsz,
            "batch": 8,
            "workers": 0,
            "abar_batches": 1,
            "plots": False,
            "project": str(tmp_path),
            "name": task,
        }
    )
    assert trainer.args.task == task and trainer.stage.reuses_gradient  # FGSM on the current model, from a YAML
    row = results(trainer.save_dir)[0]
    assert [k.removeprefix("train/") for k in row if k.startswith("train/")] == [*benign, "med_loss", "adv_loss"]
    assert float(row["train/adv_loss"]) > 0
    aux = [m.aux.weight for m in trainer.model.modules() if isinstance(m, DualBatchNorm2d)]
    assert aux and any((w != 1).any() for w in aux), "the adversarial view never reached the auxiliary BN"
    assert trainer.abar.shape == (10,) and torch.isfinite(trainer.abar).all()


@pytest.mark.parametrize("task", TASKS)
def test_adversarial_score_is_below_benign_for_a_fitted_model(fitted_tasks, tmp_path, task):
    """val_advamd: mask mAP (and box mAP) of a segmentation model, top-1 and top-5 of a classifier, benign, attacked."""
    d = fitted_tasks[task]
    out = validate_advamd(
        str(d["ckpt"]),
        str(d["data"]),
        attacks="fgsm,pgd",
        eps="8/255",
        steps=3,
        imgsz=d["imgsz"],
        baseline=str(d["ckpt"]),
        project=str(tmp_path),
        name=task,
    )
    key = TASKS[task][4]
    stats = out["rows"][0]["stats"]
    assert stats["benign"][key] > 0.5, stats["benign"]  # a working model, so the comparison means something
    assert stats["fgsm eps=0.0313725"][key] < stats["benign"][key]
    assert stats["pgd eps=0.0313725"][key] < stats["benign"][key]
    table = (Path(out["save_dir"]) / "results.md").read_text()
    names = ("**mask mAP50-95 (%)**", "**box mAP50-95 (%)**") if task == "segment" else ("**top1 (%)**", "**top5 (%)**")
    assert all(n in table for n in names) and "Δ (" in table


BLOCKED = WITHOUT_ADVAMD + textwrap.dedent(
    """
    from ultralytics import YOLO

    model = YOLO(sys.argv[2])
    metrics = model.val(data=sys.argv[3], imgsz=int(sys.argv[4]), batch=16, workers=0, plots=False, verbose=False)
    print(json.dumps({"task": model.task, "fitness": metrics.fitness,
                      "advamd": any(m.startswith("yolo_advamd") for m in sys.modules)}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_export_gives_a_stock_model_and_an_onnx_equal_to_pytorch(fitted_tasks, tmp_path, task):
    """format=pt: loaded and validated by YOLO() where yolo_advamd cannot be imported; format=onnx: same outputs."""
    d = fitted_tasks[task]
    stock = export_model(str(d["ckpt"]), format="pt")
    assert not [g for g in pickled_globals(stock) if g.startswith("yolo_advamd")]
    env = {**os.environ, "OFFLINE_GUARD_LOG": str(tmp_path / "network.log")}
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(TESTS), stock, str(d["data"]), str(d["imgsz"])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["task"] == task and loaded["fitness"] > 0.3 and not loaded["advamd"]
    assert not (tmp_path / "network.log").exists()
    onnx = export_model(str(d["ckpt"]), format="onnx", imgsz=d["imgsz"])
    x = (val_batch(d["data"], task) if task == "segment" else folder_batch(d["data"]))["img"][:4]
    model = YOLO(stock).model.float().eval()
    with torch.no_grad():
        ours = model(x)
    while isinstance(ours, (tuple, list)):  # the first output: detections and mask coefficients, or class scores
        ours = ours[0]
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])  # a batch of one, as exported
    theirs = np.concatenate(
        [session.run(None, {session.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(4)]
    )
    np.testing.assert_allclose(theirs, ours.numpy(), rtol=1e-3, atol=1e-3)


def test_attack_draws_adversarial_masks_and_reports_top1_before_and_after(fitted_tasks, tmp_path):
    """attack(): a segmentation model's side-by-side shows its masks; a classifier's results hold top-1 before/after."""
    seg, cls = fitted_tasks["segment"], fitted_tasks["classify"]
    res = attack(
        str(seg["ckpt"]),
        data=str(seg["data"]),
        split="val",
        method="pgd",
        eps=8 / 255,
        steps=3,
        imgsz=seg["imgsz"],
        save=True,
        project=str(tmp_path),
        name="seg",
        verbose=False,
    )
    assert res[0].before.masks is not None and res[0].plot().shape[1] > 3 * res[0].orig_img.shape[1]
    assert any(len(r.after.boxes) != len(r.before.boxes) or r.after.masks is None for r in res)
    res = attack(
        str(cls["ckpt"]),
        data=str(cls["data"]),
        split="val",
        method="pgd",
        eps=8 / 255,
        steps=3,
        imgsz=cls["imgsz"],
        save=True,
        project=str(tmp_path),
        name="cls",
        verbose=False,
    )
    assert len(res) == 20 and all(np.abs(r.delta).max() <= 8 for r in res)
    summary = res[0].summary()
    assert {"top1_before", "top1_after", "conf_before", "conf_after", "flipped"} <= set(summary)
    assert sum(r.summary()["flipped"] for r in res) >= 5  # the labels are the folders: the attack moves top-1
    assert (tmp_path / "cls" / "summary.csv").read_text().startswith("image,top1_before")


def test_a_classifier_is_not_validated_with_box_attacks_or_a_detector_as_attacker(fitted_tasks, tmp_path):
    d = fitted_tasks["classify"]
    with pytest.raises(ValueError, match="attack_terms=max has no meaning for a classifier"):
        validate_advamd(str(d["ckpt"]), str(d["data"]), attacks="fgsm", attack_terms="max", project=str(tmp_path))
    seg = str(fitted_tasks["segment"]["ckpt"])
    with pytest.raises(ValueError, match="attack_model is a segment model and model a classify one"):
        validate_advamd(str(d["ckpt"]), str(d["data"]), attacks="fgsm", attack_model=seg, project=str(tmp_path))
    assert not list(tmp_path.iterdir())  # refused before any run directory


def test_bad_task_data_is_refused_before_any_work(tmp_path, monkeypatch, tiny_data):
    """A detection YAML for a segmentation model, a YAML for a classifier, an empty class folder: one clear error."""
    from yolo_advamd.trainer import AdvAmdTrainer, advamd_trainer

    base = {"epochs": 1, "imgsz": 64, "project": str(tmp_path), "name": "bad"}
    with pytest.raises(ValueError, match=r"has box labels \(class x y w h\) and a segmentation model needs polygons"):
        advamd_trainer({**base, "model": "yolov8n-seg.yaml", "data": tiny_data})
    with pytest.raises(ValueError, match="a classifier trains on a folder of class folders"):
        advamd_trainer({**base, "model": "yolov8n-cls.yaml", "data": tiny_data})
    folder = tmp_path / "cls"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (folder / split / c).mkdir(parents=True)
    (folder / "train" / "cat" / "a.png").write_bytes((TESTS / "../docs/attack_example.png").resolve().read_bytes())
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] in train/ hold no image"):
        advamd_trainer({**base, "model": "yolov8n-cls.yaml", "data": str(folder)})
    with pytest.raises(ValueError, match="method=detadvprop is a detection method"):
        advamd_trainer({**base, "model": "yolov8n-cls.yaml", "method": "detadvprop"})
    with pytest.raises(ValueError, match="model=yolov8n-seg.yaml is a segment model and AdvAmdTrainer trains detect"):
        AdvAmdTrainer(overrides={**base, "model": "yolov8n-seg.yaml", "data": tiny_data})
    with pytest.raises(ValueError, match="task=pose is not supported: AdvAmd trains detect, segment, classify models"):
        advamd_trainer({**base, "model": "yolov8n-pose.yaml", "data": tiny_data})
    assert not (tmp_path / "bad").exists()
