"""Helpers shared by the test modules: model calibration and snapshots, the digits detector and its checkpoints,
run outputs. Fixtures built from them live in conftest.py."""

import csv
import textwrap
from copy import deepcopy
from pathlib import Path

import cv2
import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel
from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

from yolo_advamd.data import build_digits, build_digits_det
from yolo_advamd.nn.dual_bn import DualBatchNorm2d, convert_dual_bn

IMGSZ = 64
WITHOUT_ADVAMD = textwrap.dedent(  # the start of a script run where yolo_advamd cannot be imported (argv[1]: tests/)
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "yolo_advamd":
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[1])
    import offline_guard  # every network attempt fails and is logged
    try:
        import yolo_advamd
        sys.exit("yolo_advamd is importable: the test proves nothing")
    except ModuleNotFoundError:
        pass
    """
)


def digits_data(base: Path) -> Path:
    """A 16-image, 64 px digits-det build (real handwritten digit scans) shared by the session; return its YAML."""
    return build_digits_det(root=base / "digits", seed=1, n_train=2, n_val=16, imgsz=IMGSZ) / "digits-det.yaml"


def boxes_batch(seed: int) -> dict:
    """Two random 64 px images (from `seed`) with two boxes each, of classes 1, 4, 4 and 7."""
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "cls": torch.tensor([[1.0], [4.0], [4.0], [7.0]]),
        "bboxes": torch.tensor(
            [[0.3, 0.3, 0.3, 0.3], [0.7, 0.6, 0.25, 0.35], [0.4, 0.5, 0.5, 0.4], [0.6, 0.6, 0.3, 0.3]]
        ),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0]),
    }


def val_batch(data: Path, task: str = "detect", imgsz: int = IMGSZ, **settings) -> dict:
    """The whole val split of `data` as one preprocessed batch (letterboxed to `imgsz`, float in [0, 1], masks too, in
    the layout Ultralytics `settings` such as `overlap_mask` ask for)."""
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    cfg = get_cfg(overrides={"imgsz": imgsz, "task": task, **settings})
    dataset = build_yolo_dataset(cfg, info["val"], 16, info, mode="val", stride=32)
    batch = next(iter(build_dataloader(dataset, 16, 0, shuffle=False)))
    return {**batch, "img": batch["img"].float() / 255}


def folder_batch(root: Path, split: str = "val") -> dict:
    """A classification folder's split (`<split>/<class>/*.png`) as one batch: RGB images in [0, 1] and classes."""
    files = sorted((Path(root) / split).glob("*/*.png"))
    images = [cv2.imread(str(f))[..., ::-1].copy() for f in files]
    img = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images]).float() / 255
    return {"img": img, "cls": torch.tensor([int(f.parent.name) for f in files])}


def fit(model: nn.Module, batch: dict, steps: int = 80) -> nn.Module:
    """Fit `model` to one batch with its own loss (AdamW), then give it that batch's BN statistics; return it in eval
    mode, so the eval-mode model behaves like a trained one."""
    model.args = get_cfg()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):  # 40 fitted some CPUs only to mAP50 0.86 (floating-point order): 80 fit every one seen
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
    return model.eval()


def digits_detector(base: Path) -> DetectionModel:
    """A yolov8n fitted for 80 steps to the digits val images (mAP50 ~0.99 on them), cached for the session."""
    file = base / "digits-detector.pt"
    torch.manual_seed(1)  # the initial weights
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.names = {i: str(i) for i in range(10)}
    if file.is_file():
        model.load_state_dict(torch.load(file, weights_only=True))
        return model.eval()
    fit(model, val_batch(digits_data(base)))
    torch.save(model.state_dict(), file)
    return model


def task_checkpoints(base: Path) -> dict:
    """A yolov8n-seg fitted to a 16-scene digits-seg val split (64 px) and a yolov8n-cls fitted to a 20-image
    digits-cls val split (32 px), saved as stock checkpoints beside their data, session-cached."""
    root = base / "digits"
    out = {
        "segment": {
            "data": build_digits("digits-seg", root=root, seed=1, n_train=2, n_val=16, imgsz=IMGSZ) / "digits-seg.yaml",
            "imgsz": IMGSZ,
        },
        "classify": {
            "data": build_digits("digits-cls", root=root, seed=1, n_train=20, n_val=20, imgsz=32),
            "imgsz": 32,
        },
    }
    for task, d in out.items():
        d["ckpt"] = base / f"{task}-fitted.pt"
        if not d["ckpt"].is_file():
            torch.manual_seed(1)
            if task == "segment":
                model = fit(SegmentationModel("yolov8n-seg.yaml", nc=10, verbose=False), val_batch(d["data"], task))
            else:
                model = fit(ClassificationModel("yolov8n-cls.yaml", nc=10, verbose=False), folder_batch(d["data"]))
            model.names = {i: str(i) for i in range(10)}
            args = {"model": f"yolov8n-{task[:3]}.yaml", "imgsz": d["imgsz"], "task": task}
            save_ckpt(model, d["ckpt"], train_args=args)
    return out


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


def save_ckpt(model, file, train_args: dict | None = None, **extra):
    """Save `model` the way Ultralytics' trainer does (EMA in fp16, its args, train_args), plus `extra` keys."""
    train_args = {
        "model": "yolov8n.yaml",
        "imgsz": IMGSZ,
        "epochs": 3,
        "attack": "fgsm",
        "eps": 0.01,
        "beta1": 1.0,
        **(train_args or {}),
    }
    ema = deepcopy(model).half()
    ema.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **train_args})  # the trainer's args, AdvAmd keys too
    ckpt = {
        "epoch": 2,
        "best_fitness": 0.5,
        "model": None,
        "ema": ema,
        "updates": 10,
        "optimizer": {"state": {}, "param_groups": []},
        "train_args": train_args,
        **extra,
    }
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
