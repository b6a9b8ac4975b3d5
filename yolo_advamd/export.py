"""Export: strip the auxiliary BN and all AdvAmd state, then hand a plain model to Ultralytics' exporter.

An amended checkpoint differs from a stock one only by what training needs: `DualBatchNorm2d` modules (the auxiliary
BN), the `advamd_state` model attribute (Ā, flip counts, the frozen target's weights) and
AdvAmd keys in `train_args`. Deployment uses the main BN only (the paper's footnote 8), so every export starts by
removing all of it: the exported model is, module for module and bit for bit, the stock architecture holding the main
BN's values, with zero inference overhead.

Formats:
    - `pt`: a stock Ultralytics checkpoint `<stem>_stock.pt` (like `strip_optimizer`: fp16, no EMA, no optimizer),
      loadable by `ultralytics.YOLO` in an environment without yolo-advamd.
    - `state_dict`: a weights-only file `<stem>_state_dict.pt` (tensors and builtins only) for
      `torch.load(weights_only=True)`; rebuild the model with `load_state_dict_file`.
    - anything Ultralytics' exporter knows (`onnx`, `engine`, `torchscript`, `openvino`, ...): exported by
      `YOLO.export` with the user's options passed through untouched, written beside the checkpoint.

MagNet: `defense=` (a `method=magnet` checkpoint) also exports its autoencoder to ONNX beside the model,
`<model stem>_magnet.onnx`, with two outputs, the reconstruction (what the model is to be given) and each image's
reconstruction error (an image whose error is above the metadata's `threshold` is to be rejected).

Safe loading: with `ULTRALYTICS_SAFE_LOAD=1`, Ultralytics loads checkpoints with `torch.load(weights_only=True)` and
refuses classes it does not know. Importing `yolo_advamd.nn` (this module does) registers `DualBatchNorm2d` and
`DualSyncBatchNorm` as safe globals, so amended and resume checkpoints load in that mode in any process that imported
it; stock checkpoints written by `export_model(..., format="pt")` need nothing.

Examples:
    >>> export_model("runs/advamd/train/weights/best.pt", format="onnx", imgsz=640)  # -> '.../best.onnx'
    >>> export_model("best.pt", format="pt")  # -> '.../best_stock.pt', for any Ultralytics install
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from ultralytics.utils import LOGGER

from yolo_advamd.checkpoint import check_local_weights, load_defense, strip_advamd, task_of

STOCK_KEYS = (  # top-level keys of an Ultralytics checkpoint (BaseTrainer.save_model, strip_optimizer)
    "date",
    "version",
    "license",
    "docs",
    "epoch",
    "best_fitness",
    "stopper",
    "model",
    "ema",
    "updates",
    "modelopt",
    "optimizer",
    "scaler",
    "train_args",
    "train_metrics",
    "train_results",
    "git",
)
OWN_FORMATS = ("pt", "state_dict")


def stock_checkpoint(ckpt: dict) -> dict:
    """Return a stock Ultralytics checkpoint made from an amended (or stock) checkpoint dict, as `strip_optimizer` does.

    The model (the EMA when present) is stripped of the auxiliary BN and AdvAmd state, cast to fp16 with
    `requires_grad=False`, and its `args` reduced to Ultralytics' keys; AdvAmd checkpoint keys are dropped, the EMA,
    optimizer and training state emptied and `epoch=-1` set, so the result cannot be resumed and loads anywhere.

    Args:
        ckpt (dict): A checkpoint as loaded by `ultralytics.nn.tasks.torch_safe_load`; its objects are changed in place.

    Returns:
        (dict): The stock checkpoint, ready for `torch.save`.
    """
    from ultralytics import __version__
    from ultralytics.utils import DEFAULT_CFG_DICT, DEFAULT_CFG_KEYS

    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise TypeError(f"checkpoint has no model under 'ema' or 'model' (keys {sorted(ckpt)}): not an Ultralytics one")
    strip_advamd(model)
    if hasattr(model, "args"):  # the trainer's namespace, AdvAmd keys included
        args = model.args if isinstance(model.args, dict) else vars(model.args)
        model.args = {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS}
    model.half()
    for p in model.parameters():
        p.requires_grad = False
    args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    return {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        **{k: v for k, v in ckpt.items() if k in STOCK_KEYS},
        **dict.fromkeys(("ema", "optimizer", "best_fitness", "stopper", "updates", "scaler")),
        "model": model,
        "epoch": -1,
        "train_args": {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS},
    }


def pickled_globals(path: str | Path) -> set[str]:
    """Return the `module.name` globals the pickle of a `torch.save` file refers to (classes, functions).

    Args:
        path (str | Path): A file written by `torch.save` (zip format).

    Returns:
        (set[str]): E.g. {"ultralytics.nn.tasks.DetectionModel", "torch.nn.modules.conv.Conv2d", ...}.
    """
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name == "GLOBAL":  # protocol <= 3 (torch.save's default): "module name"
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":  # protocol >= 4: module and name pushed as the two previous strings
            found.add(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def save_stock(ckpt: dict, file: str | Path) -> Path:
    """Save a stock checkpoint and check that its pickle refers to no yolo-advamd class.

    Args:
        ckpt (dict): The output of `stock_checkpoint`.
        file (str | Path): Destination `.pt` file.

    Returns:
        (Path): `file`.

    Raises:
        RuntimeError: If an AdvAmd object survived stripping (the file would not load without yolo-advamd).
    """
    file = Path(file)
    torch.save(ckpt, file)
    ours = sorted(g for g in pickled_globals(file) if g.split(".")[0] == "yolo_advamd")
    if ours:
        file.unlink()
        raise RuntimeError(
            f"the stock checkpoint {file} would still refer to {ours}: an AdvAmd object is attached to the model "
            f"and strip_advamd does not know it; add its attribute name to yolo_advamd.checkpoint.ADVAMD_ATTRIBUTES"
        )
    return file


def weights_only_checkpoint(model: nn.Module, imgsz=None) -> dict:
    """Return a plain state dict and the metadata to rebuild the model, all tensors and builtins.

    Args:
        model (nn.Module): A stripped Ultralytics model (see `strip_advamd`).
        imgsz (int | list | None): The training image size, recorded for the user.

    Returns:
        (dict): `state_dict`, `yaml` (the model's architecture dict), `names`, `nc`, `task`, `stride`, `imgsz`,
            `version`, `date`; loadable with `torch.load(path, weights_only=True)`.
    """
    from ultralytics import __version__

    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "yaml": dict(model.yaml),
        "names": {int(k): str(v) for k, v in model.names.items()},
        "nc": len(model.names),
        "task": task_of(model),
        "stride": [float(s) for s in model.stride],
        "imgsz": imgsz,
        "version": __version__,
        "date": datetime.now().astimezone().isoformat(),
    }


def load_state_dict_file(path: str | Path) -> nn.Module:
    """Rebuild a model (detect, segment, classify) from a weights-only file of `export_model(format="state_dict")`.

    Without yolo-advamd, the same takes three lines of Ultralytics:
    `ckpt = torch.load(path, weights_only=True)`, `model = DetectionModel(ckpt["yaml"], nc=ckpt["nc"])` (or
    `SegmentationModel`, `ClassificationModel` for its `task`), `model.load_state_dict(ckpt["state_dict"])`.

    Args:
        path (str | Path): The weights-only file.

    Returns:
        (nn.Module): The model in fp32 and eval mode, with `names` and `stride` restored.
    """
    from yolo_advamd.tasks import TASKS

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if (task := ckpt.get("task", "detect")) not in TASKS:
        raise ValueError(f"{path} holds a task={task} model: load_state_dict_file rebuilds {', '.join(TASKS)}")
    model = TASKS[task].model(ckpt["yaml"], nc=ckpt["nc"], verbose=False)
    model.load_state_dict(ckpt["state_dict"])
    model.names = ckpt["names"]
    model.stride = torch.tensor(ckpt["stride"])
    return model.float().eval()


def check_format(format: str) -> str:
    """Return an export format in lower case, or refuse one that neither we nor Ultralytics' exporter know.

    Ultralytics' own refusal comes after loading the model and after a line offering to export "in the cloud", and its
    list of formats lacks ours (`OWN_FORMATS`).

    Raises:
        ValueError: Naming the closest format and every valid one.
    """
    from difflib import get_close_matches

    from ultralytics.engine.exporter import export_formats

    fmt = str(format).lower()
    valid = [*OWN_FORMATS, *(f for f in export_formats()["Argument"] if f != "-")]  # "-": PyTorch, the input itself
    if fmt not in valid:
        close = get_close_matches(fmt, valid, n=1)
        hint = f" (did you mean format={close[0]}?)" if close else ""
        raise ValueError(f"format={format} is not an export format{hint}: choose one of {', '.join(valid)}")
    return fmt


class Screen(nn.Module):
    """MagNet's autoencoder as exported: the reconstruction of the images and each image's reconstruction error."""

    def __init__(self, autoencoder: nn.Module):
        """Wrap a frozen autoencoder (`checkpoint.load_defense`)."""
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the reconstruction (B, C, H, W) and the error mean |x - reconstruction|^p per image (B,)."""
        return self.autoencoder.screen(x)


def export_defense(autoencoder: nn.Module, file: str | Path, opset: int | None = None) -> Path:
    """Export MagNet's autoencoder to ONNX (`Screen`: reconstruction and error, batch and image size dynamic), its
    threshold, error exponent, image size and model in the file's metadata; return `file`."""
    import onnx

    file, size = Path(file), autoencoder.imgsz
    x = torch.rand(1, 3, size, size)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "reconstruction": {0: "batch", 2: "height", 3: "width"}}
    torch.onnx.export(
        Screen(autoencoder).eval(),
        (x,),
        str(file),
        input_names=["images"],
        output_names=["reconstruction", "error"],
        dynamic_axes={**axes, "error": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    graph = onnx.load(str(file))
    for key in ("threshold", "p", "imgsz", "fpr", "fit_for", "task"):
        graph.metadata_props.add(key=key, value=str(getattr(autoencoder, key)))
    onnx.save(graph, str(file))
    return file


def export_model(model: str | Path, format: str = "onnx", defense: str | Path | None = None, **overrides) -> str:
    """Strip the auxiliary BN and all AdvAmd state from a checkpoint and export the plain model.

    Args:
        model (str | Path): An Ultralytics `.pt` checkpoint, amended or stock.
        format (str): `pt` (stock checkpoint), `state_dict` (weights-only file), or any Ultralytics export format
            (`onnx`, `engine`, `torchscript`, `openvino`, ...).
        defense (str | Path | None): A MagNet checkpoint (`train_advamd.py method=magnet`) whose autoencoder is
            exported to ONNX beside the model as `<model stem>_magnet.onnx` (`export_defense`); format=onnx only.
        **overrides (Any): Ultralytics export options (`imgsz`, `half`, `dynamic`, `simplify`, `opset`, `device`,
            `batch`, ...), passed through unchanged; not used by `pt` and `state_dict`.

    Returns:
        (str): Path of the exported file or directory, beside `model`.

    Raises:
        ValueError: If `format` is not an export format.
        FileNotFoundError: If `model` is not on disk.
        ModuleNotFoundError: If the format needs a package that is not installed (yolo-advamd never installs one).
    """
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    fmt = check_format(format)
    path = check_local_weights(model, "pass the one to export, e.g. model=runs/detect/train/weights/best.pt")
    if defense is not None:
        if fmt != "onnx":
            raise ValueError(f"defense= is exported to ONNX: use format=onnx (not format={fmt})")
        file = export_defense(load_defense(defense), path.with_name(f"{path.stem}_magnet.onnx"), overrides.get("opset"))
        LOGGER.info(f"MagNet's autoencoder exported to {file}")
    if fmt in OWN_FORMATS:
        if overrides:
            raise ValueError(f"format={fmt} takes no export options: remove {sorted(overrides)}")
        ckpt, _ = torch_safe_load(path)
        if fmt == "pt":
            return str(save_stock(stock_checkpoint(ckpt), path.with_name(f"{path.stem}_stock.pt")))
        m = strip_advamd(ckpt.get("ema") or ckpt["model"])
        file = path.with_name(f"{path.stem}_state_dict.pt")
        torch.save(weights_only_checkpoint(m, (ckpt.get("train_args") or {}).get("imgsz")), file)
        return str(file)
    yolo = YOLO(path)
    strip_advamd(yolo.model)
    try:
        return yolo.export(format=fmt, **overrides)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"format={fmt} needs the Python package '{e.name}', which is not installed, and yolo-advamd never "
            f"installs packages (YOLO_AUTOINSTALL=False). Install it yourself (pip install {e.name}; see "
            f"https://docs.ultralytics.com/modes/export for the versions Ultralytics supports) and export again.",
            name=e.name,
        ) from e
