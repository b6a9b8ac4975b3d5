"""Helpers shared by the test modules: model calibration and snapshots, the digits detector and its checkpoints,
run outputs. Fixtures built from them live in conftest.py."""

import csv
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

from yolo_advamd.data import build_digits_det
from yolo_advamd.nn.dual_bn import DualBatchNorm2d, convert_dual_bn

IMGSZ = 64


def digits_data(base: Path) -> Path:
    """A 16-image, 64 px digits-det build (real handwritten digit scans) shared by the session; return its YAML."""
    return build_digits_det(root=base / "digits", seed=1, n_train=2, n_val=16, imgsz=IMGSZ) / "digits-det.yaml"


def val_batch(data: Path) -> dict:
    """The whole val split of `data` as one preprocessed batch (letterboxed to IMGSZ, float in [0, 1])."""
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    dataset = build_yolo_dataset(get_cfg(overrides={"imgsz": IMGSZ}), info["val"], 16, info, mode="val", stride=32)
    batch = next(iter(build_dataloader(dataset, 16, 0, shuffle=False)))
    return {**batch, "img": batch["img"].float() / 255}


def digits_detector(base: Path) -> DetectionModel:
    """A yolov8n fitted for 80 steps to the digits val images (mAP50 ~0.99 on them), cached for the session.

    Its BN statistics are recomputed on the batch at the end, so the eval-mode model behaves like a trained one.
    """
    file = base / "digits-detector.pt"
    torch.manual_seed(1)  # the initial weights
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.names = {i: str(i) for i in range(10)}
    if file.is_file():
        model.load_state_dict(torch.load(file, weights_only=True))
        return model.eval()
    batch = val_batch(digits_data(base))
    model.args = get_cfg()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):  # 40 fitted some CPUs only to mAP50 0.86 (floating-point order): 80 fit every one seen
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the statistics of exactly this batch
    with torch.no_grad():
        model(batch["img"])
    for m in bns:
        m.momentum = 0.03
    del model.args
    model.criterion = None
    torch.save(model.state_dict(), file)
    return model.eval()


def amend(model):
    """Convert a copy of `model` to dual BN, poison its auxiliary BN, and attach AdvAmd state like the trainer.

    The auxiliary BN holds NaN statistics: any output computed through it is NaN, so a test that sees finite,
    unchanged results proves the main BN was used.
    """
    model = convert_dual_bn(deepcopy(model))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DualBatchNorm2d):
                m.aux.running_mean.fill_(float("nan"))
    model.advamd_state = {"abar": torch.rand(10), "vulnerability": {"counts": torch.ones(10, 10)}, "target": None}
    return model


def save_ckpt(model, file, **extra):
    """Save `model` the way Ultralytics' trainer does (EMA in fp16, its args, train_args), plus `extra` keys."""
    train_args = {"model": "yolov8n.yaml", "imgsz": IMGSZ, "epochs": 3, "attack": "fgsm", "eps": 0.01, "beta1": 1.0}
    ema = deepcopy(model).half()
    ema.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **train_args})  # the trainer's args, AdvAmd keys too
    ckpt = {"epoch": 2, "best_fitness": 0.5, "model": None, "ema": ema, "updates": 10,
            "optimizer": {"state": {}, "param_groups": []}, "train_args": train_args, **extra}
    torch.save(ckpt, file)
    return file


def checkpoints(base: Path) -> dict:
    """The digits detector saved as a stock checkpoint and as an amended one (dual BN, AdvAmd state), session-cached."""
    files = {"stock": base / "stock.pt", "amended": base / "amended.pt"}
    if not all(f.is_file() for f in files.values()):
        model = digits_detector(base)
        save_ckpt(model, files["stock"])
        save_ckpt(amend(model), files["amended"], advamd={"abar": torch.rand(10), "attack": "fgsm"})
    return files


def calibrate(model: nn.Module, imgsz: int) -> nn.Module:
    """Give a fresh model running BN statistics of random images (cumulative average), so eval gradients are real."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(torch.rand(4, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(s)))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    return model


def snapshot(model: nn.Module) -> dict:
    """Everything an attack must leave alone: parameters and buffers, modes, flags, gradients."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "track": [getattr(m, "track_running_stats", None) for m in model.modules()],
        "grad": [p.grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """Assert `model` matches `before` bit for bit, and no gradient reached any parameter."""
    after = snapshot(model)
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["track"] == before["track"]
    assert all(g is None for g in after["grad"])


def tiny(tmp_path, data, name, **kw):
    """Settings for a seconds-long run: yolov8n at 64 px, 4 batches of 8, SGD with a fixed schedule."""
    return {
        "model": "yolov8n.yaml",
        "data": data,
        "epochs": 1,
        "imgsz": 64,
        "batch": 8,
        "workers": 0,
        "optimizer": "SGD",
        "lr0": 0.01,
        "warmup_epochs": 0,
        "close_mosaic": 0,
        "deterministic": True,
        "seed": 0,
        "plots": False,
        "val": True,
        "abar_batches": 2,
        "project": str(tmp_path),
        "name": name,
        "exist_ok": True,
        "verbose": False,
        **kw,
    }


def results(run: Path) -> list[dict]:
    """Rows of a run's results.csv."""
    with open(run / "results.csv") as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
