"""Attack an Ultralytics detector, segmentation model or classifier in three lines: adversarial images at their
original size, with or without labels.

    >>> from ultralytics import YOLO
    >>> from yolo_advamd import attack
    >>> results = attack(YOLO("best.pt"), source="images/", method="pgd", eps=8 / 255, steps=10)

The walls users hit (`predict()` runs without gradients and after NMS, `YOLO()` freezes the parameters, the loss needs
`model.args` and a label dict) are the ones our attack stage already handles: `attack` runs the same `Attack`
classes and `DetectionObjective` as training and validation, on an fp32, eval-mode copy of the model (main BN only,
the auxiliary BN of an amended checkpoint is stripped), so the model passed in is never changed.

The perturbation lives in the original image's pixels: the model's input is made from the image by Ultralytics'
`LetterBox` geometry (resize, then gray padding to a stride multiple), here written with differentiable torch ops, so
the attack's gradient reaches every original pixel and the saved PNG is the original plus δ, ‖δ‖∞ ≤ eps·255 (plus
at most 0.5 of uint8 rounding), at the original size. Re-running `predict()` on that file reproduces the effect.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo_advamd.attack_result import AdversarialResult, caption, write_summary
from yolo_advamd.attacks import build_attack
from yolo_advamd.attacks.objectives import (
    ClassifierObjective,
    DetectionObjective,
    PreprocessedObjective,
    VanishObjective,
)
from yolo_advamd.attacks.settings import attack_settings
from yolo_advamd.attacks.targets import predicted_targets
from yolo_advamd.checkpoint import attack_copy, load_model, task_of
from yolo_advamd.image_labels import dataset_labels, original_targets, target_batch
from yolo_advamd.images import center_crop, iter_images, letterbox, to_image, to_tensor
from yolo_advamd.tasks import TASKS

OBJECTIVES = ("loss", "cls", "vanish")


def attack(
    model,
    source=None,
    method: str = "pgd",
    eps: float | str = 8 / 255,
    steps: int | None = None,
    step_size: float | None = None,
    norm: str | int = "inf",
    random_start: bool | None = None,
    deepfool: str | None = None,
    objective: str = "loss",
    data: str | None = None,
    split: str = "val",
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int | None = None,
    device=None,
    seed: int | None = 0,
    save: bool = False,
    project: str | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    verbose: bool = True,
) -> list[AdversarialResult]:
    """Attack a detector on images and return, per image, the adversarial image, δ and the Results before and after.

    Targets: with `data=` (a dataset YAML) the ground truth is used, read from each image's YOLO label file
    (`images/` → `labels/`), and `source` defaults to the dataset's `split` images. Without labels, the model's own
    post-NMS predictions on the clean image above `conf` are the targets (pseudo-labels, the standard way to attack
    without ground truth): the attack then pushes the model away from what it currently sees. `objective=vanish`
    needs no targets.

    Each image is attacked at its original size (see the module docstring) against an fp32, eval-mode copy of the
    model: the model passed in keeps its parameters, `requires_grad` flags, mode and BN statistics, and no weight
    gradient is computed. Images are processed and saved one at a time, so an error on one image keeps the files of
    the images before it.

    Args:
        model (YOLO | str | Path | nn.Module): An `ultralytics.YOLO` detection model, a `.pt` checkpoint (stock or
            amended) or a `DetectionModel`.
        source (str | Path | np.ndarray | PIL.Image | torch.Tensor | list): What `predict()` accepts: an image file,
            a folder, a glob, a list of paths or arrays, (H, W, 3) uint8 BGR arrays, or an RGB float tensor in [0, 1]
            (B, 3, H, W) (converted to uint8). Videos and streams are not supported.
        method (str): "fgsm", "pgd" or "deepfool".
        eps (float | str): L∞ budget on images scaled to [0, 1] (or the L2 budget with `norm=2`), in (0, 1];
            a fraction string such as "8/255" is accepted.
        steps (int | None): Iterations of pgd and deepfool (10 and 5 when None); fgsm is one step.
        step_size (float | None): PGD step size; its default (2.5·eps/steps) when None.
        norm (str | int): "inf" or 2.
        random_start (bool | None): Start from a random point of the eps ball; True for pgd when None.
        deepfool (str | None): DeepFool's variant, "fast" or "exact" (the paper's); "fast" when None.
        objective (str): "loss" (the full detection loss), "cls" (its classification term) or "vanish" (suppress
            every detection).
        data (str | None): A dataset YAML whose labels are the targets; None for pseudo-targets.
        split (str): The dataset split used as `source` when `source` is None.
        conf (float): Confidence threshold of predictions (and so of pseudo-targets).
        iou (float): NMS IoU threshold.
        imgsz (int | None): Inference size; the model's training size (else 640) when None.
        device (str | None): Device, e.g. "cpu" or "0"; Ultralytics' choice when None.
        seed (int | None): Seed of the random start.
        save (bool): Write the adversarial PNGs, side-by-side JPGs and CSVs to `project/name` (runs/attack/expN).
        project (str | None): Run directory's parent; runs/attack when None.
        name (str | None): Run directory name; "exp" (incremented: exp2, exp3, ...) when None.
        exist_ok (bool): Reuse an existing run directory.
        verbose (bool): Log one line per image.

    Returns:
        (list[AdversarialResult]): One result per image, in source order.

    Examples:
        >>> results = attack("best.pt", source="images/", method="fgsm", eps=0.03, save=True)
        >>> cv2.imwrite("side_by_side.jpg", results[0].plot())
    """
    from ultralytics.cfg import get_save_dir
    from ultralytics.utils import LOGGER, IterableSimpleNamespace

    objective = check_objective(objective, method)
    settings = attack_settings(method, eps, norm, steps, step_size, random_start, deepfool, key="method")
    method, eps = settings.pop("attack"), settings["eps"]
    adversary = build_attack(method, **settings, seed=seed)
    net, train_args, task = attacked_model(model)
    if TASKS[task].classifier and objective == "vanish":
        raise ValueError("objective=vanish suppresses detections and a classifier has none: use objective=loss")
    labels = None
    if data is not None:
        labels, dataset_source = dataset_labels(data, split, net, task)
        source = dataset_source if source is None else source
    images = iter_images(source)  # checks the source before any work; reads each image when its turn comes
    victim, predictor, size, stride = setup(net, train_args, imgsz, conf, iou, device, task)
    save_dir = None
    if save:
        run = {"project": project, "name": name or "exp", "task": "attack", "mode": "attack", "exist_ok": exist_ok}
        save_dir = get_save_dir(IterableSimpleNamespace(**run))
        save_dir.mkdir(parents=True, exist_ok=True)
    from ultralytics.data.augment import LetterBox

    geometry = LetterBox(size, auto=True, stride=stride)
    results, stems = [], set()
    for path, image in images:
        before = predict(predictor, image, path)
        x = to_tensor(image, next(victim.parameters()).device)
        if TASKS[
            task
        ].classifier:  # the classifier's resize and center crop; its top-1 (or the folder's class) as label
            preprocess = partial(center_crop, size=size)
            if labels:
                targets = labels(path, image.shape)
            else:
                top1 = predicted_targets(victim, {"img": preprocess(x)})["cls"]
                targets = {"source": "predictions", "cls": top1.tolist()}
            inner = ClassifierObjective(victim, torch.as_tensor(targets["cls"], device=x.device))
        else:  # detection and segmentation: the letterbox, boxes as targets (the detection terms of a seg loss)
            params = geometry.get_params({"img": image})
            preprocess = partial(letterbox, params=params)
            if objective == "vanish":
                targets = {"source": "none", "cls": np.zeros(0, int), "xyxy": np.zeros((0, 4), np.float32)}
                inner = VanishObjective(victim)
            else:
                if labels:
                    targets = labels(path, image.shape)
                    batch = target_batch(preprocess(x), targets, params)
                else:  # its detections on the clean input, boxes only as data='s labels (a seg loss's detection terms)
                    batch = predicted_targets(victim, {"img": preprocess(x)}, conf, iou)
                    targets = original_targets(batch, params, image.shape)
                inner = DetectionObjective(victim, batch, terms="cls" if objective == "cls" else "all")
        outcome = adversary(x, PreprocessedObjective(inner, preprocess))
        adv = to_image((x + outcome.delta).clamp(0, 1))
        result = AdversarialResult(
            path=path,
            orig_img=image,
            adv_img=adv,
            delta=adv.astype(np.int16) - image.astype(np.int16),
            before=before,
            after=predict(predictor, adv, path),
            targets=targets,
            method=method,
            eps=eps,
            objective=objective,
        )
        if save_dir is not None:
            stem = unique_stem(Path(path).stem, stems)
            result.save(save_dir, stem)
            write_summary(save_dir / "summary.csv", result, first=len(results) == 0)
        results.append(result)
        if verbose:
            LOGGER.info(
                f"{path}: {caption(before)} -> {caption(result.after)}, Linf {result.linf * 255:.1f}/255, "
                f"L2 {result.l2:.3f}"
            )
    if save_dir is not None and verbose:
        LOGGER.info(f"{len(results)} adversarial images saved to {save_dir}")
    return results


def check_objective(objective: str, method: str) -> str:
    """Return `objective` normalized if it is valid for the attack `method`, else raise naming the fix."""
    objective = str(objective).lower()
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective={objective} is not valid: choose loss (detection loss), cls (its class term) or vanish "
            "(suppress every detection)"
        )
    if objective == "vanish" and str(method).lower() == "deepfool":
        raise ValueError("objective=vanish has no classes for DeepFool to flip: use method=fgsm or method=pgd")
    return objective


def attacked_model(model) -> tuple[nn.Module, dict, str]:
    """Return an fp32 eval-mode copy of a detection, segmentation or classification model (main BN only), its training
    settings and its task.

    Args:
        model (YOLO | str | Path | nn.Module): An `ultralytics.YOLO`, a `.pt` checkpoint or a model.

    Raises:
        ValueError: If the model is of another kind (pose, OBB, RT-DETR, ...).
        FileNotFoundError: If a checkpoint path is not a `.pt` file on disk.
    """
    from ultralytics.engine.model import Model
    from ultralytics.nn.tasks import (
        ClassificationModel,
        DetectionModel,
        RTDETRDetectionModel,
    )

    label = model if isinstance(model, (str, Path)) else type(model).__name__
    module = model.model if isinstance(model, Model) else model  # an ultralytics.YOLO holds the model
    net, _, train_args = load_model(module, "attack needs the model's gradients: pass its .pt checkpoint")
    task = task_of(net)
    supported = isinstance(net, ClassificationModel) or isinstance(net, DetectionModel) and task in TASKS
    if not supported or isinstance(net, RTDETRDetectionModel):
        kind = "RT-DETR" if isinstance(net, RTDETRDetectionModel) else task
        raise ValueError(
            f"model={label} is a {kind} model: attack supports YOLO {', '.join(TASKS)} models, e.g. a yolov8n, "
            "yolov8n-seg or yolov8n-cls checkpoint"
        )
    return net, train_args, task


def setup(net: nn.Module, train_args: dict, imgsz, conf: float, iou: float, device, task: str):
    """Return the attacked copy, the task's Ultralytics predictor on another copy, the inference size and the stride."""
    from ultralytics.utils.checks import check_imgsz
    from ultralytics.utils.torch_utils import select_device

    dev = select_device(device, verbose=False)
    victim = attack_copy(net, train_args, dev)
    stride = max(int(net.stride.max()), 32)  # as AutoBackend reports it to the predictor
    size = check_imgsz(imgsz or train_args.get("imgsz", 640), stride=stride, min_dim=2)
    size = size[0] if TASKS[task].classifier else size  # a classifier crops a square
    overrides = {
        "conf": conf,
        "iou": iou,
        "imgsz": size,
        "device": device,
        "batch": 1,
        "rect": True,
        "mode": "predict",
        "save": False,
        "verbose": False,
    }  # (Model.predict's settings)
    predictor = TASKS[task].predictor(overrides=overrides)
    predictor.setup_model(net, verbose=False)  # a deepcopy, fused for inference
    return victim, predictor, size, stride


def predict(predictor, image: np.ndarray, path: str):
    """Return the predictor's `Results` on one BGR image, with `path` as its source."""
    result = predictor(source=[image])[0]
    result.path = path
    return result


def unique_stem(stem: str, used: set) -> str:
    """Return `stem`, or `stem_2`, `stem_3`, ... if already used (images of the same name in different folders)."""
    out, i = stem, 1
    while out in used:
        i += 1
        out = f"{stem}_{i}"
    used.add(out)
    return out
