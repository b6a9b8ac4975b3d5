"""Checkpoints: the one place a model is found on disk, loaded, stripped of AdvAmd, copied for attacks or frozen.

Validation, export, the attack stage, the attack API and the trainer take their models from here, so an amended
checkpoint (dual BN, `advamd_state`, a `ViewLoss` criterion) is turned into a plain Ultralytics model the same way
everywhere, and a checkpoint that is not on disk is refused the same way everywhere: nothing is ever downloaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from yolo_advamd.nn.dual_bn import strip_aux_bn

ADVAMD_ATTRIBUTES = ("advamd_state",)  # set on the model (and its EMA) by AdvAmdTrainer.save_advamd_state


@dataclass
class Opened:
    """A checkpoint opened once (`open_checkpoint`), for everyone who needs it: its task, its model, its settings.

    Attributes:
        path (Path): The `.pt` file.
        model (nn.Module): Its model (EMA if saved) in fp32, as Ultralytics' `load_checkpoint` returns it, `args` set.
        ckpt (dict): The checkpoint's dict (`epoch`, `train_args`, optimizer state, ...).
    """

    path: Path
    model: nn.Module
    ckpt: dict

    @property
    def task(self) -> str:
        """The task of its model (`task_of`)."""
        return task_of(self.model)


def open_checkpoint(model: str | Path, why: str | None = None, key: str = "model") -> Opened | None:
    """Open the `.pt` checkpoint `model` names, once, as Ultralytics' trainer does (`load_checkpoint`); None for a YAML.

    Args:
        model (str | Path): The `model=` argument: a YAML (built from scratch) or a checkpoint path.
        why (str | None): Why a `.pt` checkpoint is required here (`check_local_weights`); None accepts a YAML too.
        key (str): The argument's name, for messages.

    Returns:
        (Opened | None): The checkpoint, or None for a YAML.

    Raises:
        FileNotFoundError: If `model` names a checkpoint that is not on disk (nothing is downloaded).
        ValueError: If the file holds no model (e.g. a weights-only state dict).
    """
    from ultralytics.nn.tasks import load_checkpoint

    if (path := check_local_weights(model, why, key)) is None:
        return None
    try:
        net, ckpt = load_checkpoint(path)
    except TypeError as e:  # Ultralytics' "references types outside the supported Ultralytics checkpoint format"
        raise ValueError(
            f"{model} holds no model (a weights-only file from export format=state_dict?): pass the "
            "training checkpoint, e.g. model=runs/detect/train/weights/best.pt"
        ) from e
    return Opened(path, net, ckpt)


def check_local_weights(model: str | Path, why: str | None = None, key: str = "model") -> Path | None:
    """Fail at once, with the fix, when a checkpoint is named that is not on disk (nothing is downloaded).

    Args:
        model (str | Path): The `model=` argument: a YAML (built from scratch) or a checkpoint path.
        why (str | None): Why a `.pt` checkpoint is required here (validation, export); None accepts a YAML too.
        key (str): The argument's name, for the message (`model`, `baseline`, ...).

    Returns:
        (Path | None): The checkpoint's path, or None for a YAML (when `why` is None).

    Raises:
        FileNotFoundError: If `model` names a checkpoint that does not exist locally, or is not a `.pt` when one is
            required.
    """
    path = Path(str(model))
    if path.suffix == ".pt":
        if path.is_file():
            return path
        raise FileNotFoundError(
            f"{key}={model} is not on disk and yolo-advamd never downloads weights (it runs offline). "
            f"Copy the checkpoint to this path, pass an existing path ({key}=path/to/best.pt)"
            + (f": {why}" if why else ", or train from scratch with a YAML (model=yolov8n.yaml).")
        )
    if why is not None:
        raise FileNotFoundError(f"{key}={model} is not a .pt checkpoint on disk: {why}")
    return None


def strip_advamd(model: nn.Module) -> nn.Module:
    """Remove the auxiliary BN and every AdvAmd attribute from `model`, in place: a plain Ultralytics model remains.

    Args:
        model (nn.Module): An amended model (dual BN, `advamd_state`, AdvAmd loss criterion) or a stock one, which is
            returned unchanged.

    Returns:
        (nn.Module): `model`, with plain BatchNorm layers holding the main BN's values, no AdvAmd attributes and no
            criterion (it is rebuilt on demand by Ultralytics).
    """
    strip_aux_bn(model)
    for m in model.modules():
        for name in ADVAMD_ATTRIBUTES:
            m.__dict__.pop(name, None)
    if getattr(model, "criterion", None) is not None:
        model.criterion = None  # a ViewLoss wrapper would pickle a yolo_advamd class
    return model


def load_model(model: str | Path | nn.Module, why: str, key: str = "model") -> tuple[nn.Module, str, dict]:
    """Load a `.pt` checkpoint (amended or stock) as a plain fp32 eval-mode model: main BN only, no AdvAmd state.

    Args:
        model (str | Path | nn.Module): A checkpoint path or a model (copied, not changed).
        why (str): Why a `.pt` is needed, for the message when `model` is not one on disk.
        key (str): The argument's name, for that message.

    Returns:
        (tuple): The model, its label for tables, and its training settings (Ultralytics keys only).
    """
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils import DEFAULT_CFG_KEYS

    if isinstance(model, nn.Module):
        net, label = copy.deepcopy(model), type(model).__name__
    else:
        net, _ = load_checkpoint(check_local_weights(model, why, key))
        label = str(model)
    args = getattr(net, "args", None) or {}  # a model built from a YAML has none
    args = args if isinstance(args, dict) else vars(args)
    return strip_advamd(net).float().eval(), label, {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS}


def load_defense(defense: str | Path, key: str = "defense") -> nn.Module:
    """Load a MagNet checkpoint (`train_advamd.py method=magnet`) as its frozen fp32 eval-mode autoencoder.

    Args:
        defense (str | Path): The `.pt` a MagNet run wrote (its `weights/best.pt`).
        key (str): The argument's name, for messages.

    Returns:
        (Autoencoder): The autoencoder, with the threshold set on benign val after training.

    Raises:
        FileNotFoundError: If it is not a `.pt` on disk.
        ValueError: If it is not a finished MagNet run's checkpoint.
    """
    from ultralytics.nn.tasks import torch_safe_load

    from yolo_advamd.nn.autoencoder import Autoencoder

    how = "train one with `train_advamd.py method=magnet model=best.pt` and pass its weights/best.pt"
    path = check_local_weights(defense, f"{key}= is a MagNet checkpoint: {how}", key)
    ckpt, _ = torch_safe_load(path)
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, Autoencoder) or model.threshold is None:
        found = f"a {type(model).__name__} checkpoint" if isinstance(model, nn.Module) else "no model"
        raise ValueError(f"{key}={defense} holds {found}, not a finished MagNet run's autoencoder: {how}")
    return freeze_target(model)


def attack_copy(model: nn.Module, train_args: dict, device: torch.device) -> nn.Module:
    """Return the model attacks differentiate: an fp32, eval-mode copy with frozen weights and a cfg namespace."""
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

    net = freeze_target(model).to(device)
    net.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **train_args})  # box, cls, dfl gains of its training
    net.criterion = None
    return net


def freeze_target(model: nn.Module) -> nn.Module:
    """Return a frozen copy of `model`: the paper's target model M_T.

    The copy is unwrapped from DDP / torch.compile, deep-copied, cast to float32, put in eval mode and has
    `requires_grad=False` on every parameter; `model` itself is not changed.

    Args:
        model (nn.Module): The starting detector (e.g. a `DetectionModel` with `args` set for its criterion).

    Returns:
        (nn.Module): The frozen copy, on the same device as `model`.
    """
    from ultralytics.utils.torch_utils import unwrap_model

    target = copy.deepcopy(unwrap_model(model)).float().eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def resume_checkpoint(resume: bool | str | Path) -> Opened:
    """Open the checkpoint that `resume=` continues, refusing one that cannot be resumed.

    `resume=True` takes the newest `last*.pt` under the working directory, as Ultralytics does; a path must exist
    (Ultralytics would silently resume the newest run instead). A finished run (its final strip set `epoch=-1`) and a
    checkpoint without AdvAmd settings (stock Ultralytics) are refused here, before the trainer makes a run directory.

    Args:
        resume (bool | str | Path): The `resume=` argument: True or a `last.pt` path.

    Returns:
        (Opened): The checkpoint; its `train_args` are the run's settings.

    Raises:
        FileNotFoundError: If there is no such checkpoint.
        ValueError: If its training is finished or it is not an AdvAmd checkpoint, saying to fine-tune it instead.
    """
    from ultralytics.utils.files import get_latest_run

    path = Path(get_latest_run() if resume is True else str(resume))
    if not path.is_file() or path.suffix != ".pt":
        found = "found no last.pt under the working directory" if resume is True else "is not a checkpoint on disk"
        raise FileNotFoundError(
            f"resume={resume} {found}: pass the last.pt of an interrupted run, e.g. "
            "resume=runs/detect/train/weights/last.pt"
        )
    opened = open_checkpoint(path, key="resume")
    args = opened.ckpt.get("train_args") or {}
    if not 0 < opened.ckpt.get("epoch", -1) + 1 < args.get("epochs", 0):  # Ultralytics' own test, in its trainer
        raise ValueError(f"training of {path} is finished: nothing to resume (use model={path} to fine-tune it)")
    if "method" not in args:
        raise ValueError(
            f"{path} is not an AdvAmd checkpoint (its settings name no method=), so it cannot be resumed "
            f"here: use model={path} to fine-tune it"
        )
    return opened


def task_of(model: nn.Module) -> str:
    """Return the task of a model from its class ("segment", "classify", "pose", "obb", "detect", ...).

    The class decides, not `model.args["task"]`, which a checkpoint made outside a trainer may leave at "detect".
    """
    from ultralytics.nn.tasks import (
        ClassificationModel,
        OBBModel,
        PoseModel,
        SegmentationModel,
        guess_model_task,
    )

    kinds = ((SegmentationModel, "segment"), (ClassificationModel, "classify"), (PoseModel, "pose"), (OBBModel, "obb"))
    return next((task for cls, task in kinds if isinstance(model, cls)), None) or guess_model_task(model)


def model_task(overrides: dict, opened: Opened | None = None) -> str:
    """Return the task of a run: `task=`, else the model's (a `.pt`'s model class, a YAML's head).

    Args:
        overrides (dict): The run's settings: `task`, `model` or `resume`.
        opened (Opened | None): The run's checkpoint, when it is open already (else a `.pt` is opened here).

    Returns:
        (str): "detect", "segment", "classify", ...

    Raises:
        FileNotFoundError: If the model or resumed checkpoint is a `.pt` that is not on disk (before Ultralytics could
            guess a task from its name).
    """
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    if overrides.get("task"):
        return str(overrides["task"])
    resume = overrides.get("resume")
    model = str(resume if isinstance(resume, (str, Path)) and resume else overrides.get("model") or "yolov8n.yaml")
    if opened or (opened := open_checkpoint(model, key="resume" if model == str(resume) else "model")):
        return opened.task
    return guess_model_task(yaml_model_load(model)) if model.endswith((".yaml", ".yml")) else guess_model_task(model)
