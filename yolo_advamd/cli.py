"""Command-line entry points behind train_advamd.py, val_advamd.py and export.py: `key=value` like `yolo train`."""

from __future__ import annotations

import inspect
import os
import sys

import torch

from yolo_advamd.cfg import ADVAMD_DEFAULTS, check_keys, help_text, parse_cli
from yolo_advamd.offline import check_local_weights

DEMO = {  # the embedded demo: a short vanilla baseline, then an AdvAmd fine-tune from it (FGSM, the paper's settings)
    "baseline": {"model": "yolov8n.yaml", "epochs": 8, "method": "vanilla"},
    "advamd": {"epochs": 1, "method": "advamd", "hyp": "hyps/advamd-fgsm.yaml", "abar_batches": 10},
    "shared": {
        "data": "data/digits-det.yaml",
        "imgsz": 160,
        "batch": 16,
        "fraction": 0.5,
        "close_mosaic": 2,
        "project": "advamd-demo",  # runs/detect/advamd-demo
        "exist_ok": True,
    },
}


VAL_KEYS = {
    "model": None,
    "data": "data/digits-det.yaml",
    "attacks": "fgsm,pgd",
    "eps": "0.01,0.1",
    "baseline": None,
    "attack_model": None,
    "save_json": False,
    "save_adv": False,
    "imgsz": None,
    "batch": 16,
    "device": None,
}
EXPORT_KEYS = {"model": None, "format": "onnx (engine, torchscript, openvino, pt: stock checkpoint, state_dict)"}


def use_all_cores() -> None:
    """Use every core for torch on the CPU: Ultralytics keeps one free (`min(8, cpu_count - 1)` threads).

    On a 2-core machine that is one thread; CPU training runs its data loading in the main process (workers=0), so a
    spare core only idles. Set YOLO_ADVAMD_THREADS to choose another number.
    """
    import ultralytics.utils as uu
    import ultralytics.utils.torch_utils as tu

    threads = int(os.getenv("YOLO_ADVAMD_THREADS", os.cpu_count() or 1))
    uu.NUM_THREADS = tu.NUM_THREADS = threads  # select_device() re-applies NUM_THREADS for CPU training
    torch.set_num_threads(threads)


def train(overrides: dict):
    """Train with `AdvAmdTrainer` and return the trainer."""
    from yolo_advamd.trainer import AdvAmdTrainer

    trainer = AdvAmdTrainer(overrides={"model": "yolov8n.yaml", "data": "data/digits-det.yaml", **overrides})
    trainer.train()
    return trainer


def demo():
    """Run the embedded demo: a vanilla baseline, an AdvAmd fine-tune from its best.pt, and their benign mAP."""
    base = train({**DEMO["shared"], **DEMO["baseline"], "name": "baseline"})
    amended = train({**DEMO["shared"], **DEMO["advamd"], "model": str(base.best), "name": "advamd"})
    rows = [("baseline (vanilla)", base), ("AdvAmd fine-tune", amended)]
    print("\nbenign val mAP50-95 / mAP50 (main BN):")
    for name, t in rows:
        m = t.metrics or {}
        print(f"  {name:20s} {m.get('metrics/mAP50-95(B)', 0):.4f} / {m.get('metrics/mAP50(B)', 0):.4f}  {t.save_dir}")
    return amended


def main_train(argv: list[str] | None = None) -> int:
    """`python train_advamd.py key=value ...`; no arguments runs the embedded demo."""
    return run(argv, "train_advamd.py", "model=yolov8n.yaml data=data/digits-det.yaml hyp=hyps/advamd-fgsm.yaml eps=0.01 epochs=30", ADVAMD_DEFAULTS, lambda a: train(a) if a else demo())


def main_val(argv: list[str] | None = None) -> int:
    """`python val_advamd.py model=best.pt data=... attacks=fgsm,pgd eps=0.01,0.1 [baseline=stock.pt]`."""

    def job(args):
        from ultralytics.utils import DEFAULT_CFG_DICT

        from yolo_advamd.validate import validate_advamd

        own = {**dict.fromkeys(inspect.signature(validate_advamd).parameters), **VAL_KEYS}
        own.pop("overrides")
        check_keys({**DEFAULT_CFG_DICT, **own}, args, listed=own)
        if not args.get("model"):
            raise ValueError("model= is required: the checkpoint to evaluate, e.g. model=runs/detect/train/weights/best.pt")
        for key in ("model", "baseline", "attack_model"):
            if args.get(key):
                check_local_weights(args[key])
        print(validate_advamd(**{"data": VAL_KEYS["data"], **args})["markdown"])

    return run(argv, "val_advamd.py", "model=best.pt data=data/digits-det.yaml attacks=fgsm,pgd eps=0.01,0.1 [baseline=stock.pt] [save_json=True] [save_adv=True]", VAL_KEYS, job)


def main_export(argv: list[str] | None = None) -> int:
    """`python export.py model=amended.pt format=onnx|engine|torchscript|openvino|pt|state_dict ...`."""

    def job(args):
        from ultralytics.utils import DEFAULT_CFG_DICT

        from yolo_advamd.export import export_model

        check_keys({**DEFAULT_CFG_DICT, **EXPORT_KEYS}, args, listed=EXPORT_KEYS)  # before loading the checkpoint
        if not args.get("model"):
            raise ValueError("model= is required: the checkpoint to export, e.g. model=runs/detect/train/weights/best.pt")
        check_local_weights(args["model"])
        print(export_model(args.pop("model"), args.pop("format", "onnx"), **args))

    return run(argv, "export.py", "model=amended.pt format=onnx [imgsz=640 half=False ...]", EXPORT_KEYS, job)


def run(argv, program: str, usage: str, keys: dict, job, ultralytics_keys: bool = True) -> int:
    """Parse `key=value` arguments, print help or run `job(args)`, and turn bad input into a one-line error."""
    try:
        args = parse_cli(argv)
        if args.get("help"):
            print(help_text(program, usage, keys, ultralytics_keys))
            return 0
        use_all_cores()
        job(args)
        return 0
    except (SyntaxError, ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return 2
