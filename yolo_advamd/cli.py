"""Command-line entry points behind train_advamd.py, val_advamd.py, export.py and attack.py: `key=value` like
`yolo train`."""

from __future__ import annotations

import inspect
import os
import re
import sys

import torch

from yolo_advamd.cfg import (
    ADVAMD_DEFAULTS,
    ADVAMD_NOTES,
    check_keys,
    help_text,
    parse_cli,
)

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
    "val_eps": 0.01,  # the FGSM budget the fine-tune trained with, for the closing table
}


VAL_CLI_DEFAULTS = {
    "data": "the task's embedded set (data/digits-det.yaml, -seg, -cls)",
    "attacks": "fgsm,pgd",
    "eps": "0.01,0.1",
}  # val_advamd.py's own defaults for yolo_advamd.validate_advamd()
ATTACK_CLI_DEFAULTS = {"eps": "8/255", "save": True}  # attack.py's own defaults for yolo_advamd.attack()


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
    """Train with the AdvAmd trainer of the model's task (`trainer.advamd_trainer`) and return the trainer."""
    from yolo_advamd.cfg import resolve_settings
    from yolo_advamd.trainer import advamd_trainer

    if not overrides.get("resume"):  # a resumed run keeps its own model and data
        overrides = {"model": "yolov8n.yaml", **overrides}
    trainer = advamd_trainer(resolve_settings(overrides, default_data=True))
    trainer.train()
    return trainer


def demo():
    """Run the embedded demo: a vanilla baseline, an AdvAmd fine-tune from its best.pt, and both on benign and FGSM val.

    The last step is `val_advamd.py model=<advamd best.pt> baseline=<baseline best.pt> attacks=fgsm eps=0.01`: the table
    shows what the fine-tune costs on benign images and what it buys under attack.
    """
    from yolo_advamd.validate import validate_advamd

    base = train({**DEMO["shared"], **DEMO["baseline"], "name": "baseline"})
    amended = train({**DEMO["shared"], **DEMO["advamd"], "model": str(base.best), "name": "advamd"})
    table = validate_advamd(
        str(amended.best),
        DEMO["shared"]["data"],
        attacks="fgsm",
        eps=DEMO["val_eps"],
        baseline=str(base.best),
        imgsz=DEMO["shared"]["imgsz"],
        project=str(amended.save_dir.parent),
        name="val",
        exist_ok=True,
    )
    print(f"\nAdvAmd fine-tune vs its baseline, benign and FGSM ε={DEMO['val_eps']} val (main BN), mAP in %:\n")
    print(table["markdown"])
    print(f"Runs: {base.save_dir}, {amended.save_dir}, {table['save_dir']}")
    return amended


def main_train(argv: list[str] | None = None) -> int:
    """`python train_advamd.py key=value ...`; no arguments runs the embedded demo."""
    return run(
        argv,
        "train_advamd.py",
        "model=yolov8n.yaml data=data/digits-det.yaml hyp=hyps/advamd-fgsm.yaml eps=0.01 epochs=30",
        ADVAMD_DEFAULTS,
        lambda a: train(a) if a else demo(),
        notes=ADVAMD_NOTES,
        methods=True,
    )


def main_val(argv: list[str] | None = None) -> int:
    """`python val_advamd.py model=best.pt data=... attacks=fgsm,pgd eps=0.01,0.1 [baseline=stock.pt]`."""
    from yolo_advamd.validate import validate_advamd

    def job(args):
        from ultralytics.utils import DEFAULT_CFG_DICT

        own = val_keys()
        check_keys({**DEFAULT_CFG_DICT, **own}, args, listed=own)
        if not args.get("model"):
            raise ValueError(
                "model= is required: the checkpoint to evaluate, e.g. model=runs/detect/train/weights/best.pt"
            )
        print(validate_advamd(**args)["markdown"])

    usage = (
        "model=best.pt data=data/digits-det.yaml attacks=fgsm,pgd eps=0.01,0.1 [baseline=stock.pt] "
        "[save_json=True] [save_adv=True]"
    )
    return run(argv, "val_advamd.py", usage, val_keys(), job, notes=arg_notes(validate_advamd))


def val_keys() -> dict:
    """The arguments of `validate_advamd()` with their defaults, as val_advamd.py takes them (`VAL_CLI_DEFAULTS`)."""
    from yolo_advamd.validate import validate_advamd

    return signature_keys(validate_advamd, VAL_CLI_DEFAULTS)


def arg_notes(function) -> dict:
    """The meaning of each argument of `function`, one line each, from its docstring's Google-style `Args:` section."""
    notes, key = {}, None
    for line in inspect.getdoc(function).partition("\nArgs:\n")[2].splitlines():
        if not line.startswith("    "):  # the next section
            break
        if entry := re.fullmatch(r"    (?:\*\*)?(\w+) \(.+?\): (.*)", line):
            key, notes[entry[1]] = entry[1], entry[2]
        elif key:
            notes[key] += " " + line.strip()
    return notes


def signature_keys(function, cli_defaults: dict) -> dict:
    """The keyword arguments of `function` with their defaults (None when required), updated by `cli_defaults`."""
    params = inspect.signature(function).parameters.values()
    keys = {p.name: None if p.default is p.empty else p.default for p in params if p.kind is not p.VAR_KEYWORD}
    return {**keys, **cli_defaults}


def main_export(argv: list[str] | None = None) -> int:
    """`python export.py model=amended.pt format=onnx|engine|torchscript|openvino|pt|state_dict ...`."""
    from yolo_advamd.export import export_model

    own = signature_keys(export_model, {})

    def job(args):
        from ultralytics.utils import DEFAULT_CFG_DICT

        check_keys({**DEFAULT_CFG_DICT, **own}, args, listed=own)  # before loading the checkpoint
        if not args.get("model"):
            raise ValueError(
                "model= is required: the checkpoint to export, e.g. model=runs/detect/train/weights/best.pt"
            )
        print(export_model(args.pop("model"), args.pop("format", "onnx"), **args))

    usage = "model=amended.pt format=onnx [imgsz=640 half=False ...]"
    return run(argv, "export.py", usage, own, job, notes=arg_notes(export_model))


def main_attack(argv: list[str] | None = None) -> int:
    """`python attack.py model=best.pt source=images/ method=pgd eps=8/255 [data=... objective=vanish save=True]`."""
    from yolo_advamd.attack_api import attack

    def job(args):
        check_keys(attack_keys(), args)
        if not args.get("model"):
            raise ValueError("model= is required: the model to attack, e.g. model=runs/detect/train/weights/best.pt")
        args = {**attack_keys(), **args}
        if args.get("source") is None and args.get("data") is None:
            raise ValueError("source= is required: an image, a folder or a glob (or data= and split= for a dataset)")
        results = attack(**args)
        if results and results[0].files:
            print(f"{len(results)} adversarial images in {results[0].files['adversarial'].parent}")

    usage = "model=best.pt source=images/ method=pgd eps=8/255 [steps=10 objective=loss|cls|vanish data=... save=True]"
    return run(argv, "attack.py", usage, attack_keys(), job, ultralytics_keys=False, notes=arg_notes(attack))


def attack_keys() -> dict:
    """The arguments of `yolo_advamd.attack()` with their defaults, as attack.py takes them (`ATTACK_CLI_DEFAULTS`)."""
    from yolo_advamd.attack_api import attack

    return signature_keys(attack, ATTACK_CLI_DEFAULTS)


def run(argv, program: str, usage: str, keys: dict, job, ultralytics_keys: bool = True, **help_kw) -> int:
    """Parse `key=value` arguments, print help or run `job(args)`, and turn bad input into a one-line error."""
    try:
        args = parse_cli(argv)
        if args.get("help"):
            print(help_text(program, usage, keys, ultralytics_keys, **help_kw))
            return 0
        use_all_cores()
        job(args)
        return 0
    except (SyntaxError, ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return 2
