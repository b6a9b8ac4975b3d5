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

import csv
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

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
from yolo_advamd.images import center_crop, iter_images, letterbox, to_image, to_tensor

OBJECTIVES = ("loss", "cls", "vanish")
PREDICTORS = {  # task -> its Ultralytics predictor
    "detect": "ultralytics.models.yolo.detect.DetectionPredictor",
    "segment": "ultralytics.models.yolo.segment.SegmentationPredictor",
    "classify": "ultralytics.models.yolo.classify.ClassificationPredictor",
}
CSV_COLUMNS = ("image", "stage", "class", "name", "confidence", "x1", "y1", "x2", "y2",
               "detections_before", "detections_after", "mean_conf_drop", "linf", "l2")  # fmt: skip


@dataclass
class AdversarialResult:
    """One attacked image: the original and adversarial pixels, δ, and the model's `Results` before and after.

    Attributes:
        path (str): The source image's path (`imageN.jpg` for arrays and tensors, as Ultralytics names them).
        orig_img (np.ndarray): (H, W, 3) uint8 BGR original image, like `Results.orig_img`.
        adv_img (np.ndarray): (H, W, 3) uint8 BGR adversarial image at the original size.
        delta (np.ndarray): (H, W, 3) int16 BGR `adv_img - orig_img` in 0-255 units: exactly what a saved PNG adds.
        before (Results): `predict()` on the original image.
        after (Results): `predict()` on the adversarial image.
        targets (dict): What the attack pushed against: `source` ("labels", "predictions" or "none" for vanish),
            `cls` (n,) and `xyxy` (n, 4) in original-image pixels.
        method (str): The attack, e.g. "pgd".
        eps (float): Its budget on images scaled to [0, 1].
        objective (str): "loss", "cls" or "vanish".
        files (dict): Paths written by `save` (`adversarial`, `compare`, `csv`).
    """

    path: str
    orig_img: np.ndarray
    adv_img: np.ndarray
    delta: np.ndarray
    before: object
    after: object
    targets: dict
    method: str
    eps: float
    objective: str
    files: dict = field(default_factory=dict)

    @property
    def linf(self) -> float:
        """Return ‖δ‖∞ on images scaled to [0, 1] (the unit of eps)."""
        return float(np.abs(self.delta).max()) / 255 if self.delta.size else 0.0

    @property
    def l2(self) -> float:
        """Return ‖δ‖₂ over the whole image on images scaled to [0, 1]."""
        return float(np.linalg.norm(self.delta.astype(np.float64) / 255))

    def summary(self) -> dict:
        """Return detections before and after, mean confidences, their drop (before − after, 0 for none), L∞ and L2.

        For a classifier: the top-1 class and its confidence before and after, and whether the top-1 changed.
        """
        if self.before.probs is not None:
            (c0, p0), (c1, p1) = ((r.probs.top1, float(r.probs.top1conf)) for r in (self.before, self.after))
            names = self.before.names
            return {"image": self.path, "top1_before": names[c0], "conf_before": round(p0, 5), "top1_after": names[c1],
                    "conf_after": round(p1, 5), "flipped": c0 != c1, "linf": round(self.linf, 6), "l2": round(self.l2, 5)}  # fmt: skip
        conf = [r.boxes.conf.float().mean().item() if len(r.boxes) else 0.0 for r in (self.before, self.after)]
        return {
            "image": self.path,
            "detections_before": len(self.before.boxes),
            "detections_after": len(self.after.boxes),
            "mean_conf_before": round(conf[0], 5),
            "mean_conf_after": round(conf[1], 5),
            "mean_conf_drop": round(conf[0] - conf[1], 5),
            "linf": round(self.linf, 6),
            "l2": round(self.l2, 5),
        }

    def plot(self, min_height: int = 320) -> np.ndarray:
        """Return a side-by-side BGR picture: clean predictions | adversarial predictions | δ amplified around gray.

        Predictions are Ultralytics' own drawings: boxes, the masks of a segmentation model, a classifier's top-5.

        Small images are enlarged by an integer factor (nearest neighbour, so pixels stay visible) to at least
        `min_height` before boxes and labels are drawn.

        Args:
            min_height (int): Minimum height of each panel in pixels.

        Returns:
            (np.ndarray): (H', W', 3) uint8 BGR image.
        """
        s = max(1, math.ceil(min_height / self.orig_img.shape[0]))
        peak = max(int(np.abs(self.delta).max(initial=0)), 1)
        gain = 127 / peak
        delta = np.clip(128 + self.delta.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        eps = f"{self.eps * 255:.3g}/255"
        panels = {
            f"clean: {_caption(self.before)}": _enlarged(self.before, s).plot(),
            f"{self.method} eps={eps}: {_caption(self.after)}": _enlarged(self.after, s).plot(),
            f"delta x{gain:.3g} (max {peak}/255)": cv2.resize(delta, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST),
        }
        tiles = []
        for title, image in panels.items():
            scale = min(0.5, 0.9 * image.shape[1] / (9.5 * len(title)))  # fit the title to the panel's width
            strip = np.full((26, image.shape[1], 3), 255, np.uint8)
            cv2.putText(strip, title, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
            tiles += [np.vstack([strip, image]), np.full((image.shape[0] + 26, 6, 3), 255, np.uint8)]
        return np.hstack(tiles[:-1])

    def save(self, save_dir: str | Path, stem: str | None = None) -> dict:
        """Write `<stem>.png` (adversarial, lossless), `<stem>_compare.jpg` (`plot`) and `<stem>.csv` into `save_dir`.

        The CSV's first row (`stage=summary`) holds the image's detections before and after, the mean confidence drop,
        L∞ and L2 of δ (images scaled to [0, 1]); one row per detection follows (`stage` before or after, class,
        name, confidence, box corners in original-image pixels). A classifier's CSV is its one summary row.

        Args:
            save_dir (str | Path): An existing directory.
            stem (str | None): File name stem; the source's stem when None.

        Returns:
            (dict): The written paths, also kept in `files`.
        """
        save_dir, stem = Path(save_dir), stem or Path(self.path).stem
        files = {"adversarial": save_dir / f"{stem}.png", "compare": save_dir / f"{stem}_compare.jpg",
                 "csv": save_dir / f"{stem}.csv"}  # fmt: skip
        if not cv2.imwrite(str(files["adversarial"]), self.adv_img):
            raise OSError(f"could not write {files['adversarial']}: check that the directory is writable")
        cv2.imwrite(str(files["compare"]), self.plot())
        summary = self.summary()
        if self.before.probs is not None:
            columns, rows = list(summary), [summary]
        else:
            columns, rows = CSV_COLUMNS, [{**{k: summary[k] for k in CSV_COLUMNS if k in summary}, "stage": "summary"}]
        for stage, r in (("before", self.before), ("after", self.after)) if self.before.boxes is not None else ():
            for (x1, y1, x2, y2), c, p in zip(r.boxes.xyxy.tolist(), r.boxes.cls.tolist(), r.boxes.conf.tolist()):
                rows.append({"image": self.path, "stage": stage, "class": int(c), "name": r.names[int(c)],
                             "confidence": round(p, 5), "x1": round(x1, 2), "y1": round(y1, 2),
                             "x2": round(x2, 2), "y2": round(y2, 2)})  # fmt: skip
        with open(files["csv"], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        self.files = files
        return files


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
    if task == "classify" and objective == "vanish":
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
        if task == "classify":  # the classifier's resize and center crop; its top-1 (or the folder's class) as label
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
            path=path, orig_img=image, adv_img=adv, delta=adv.astype(np.int16) - image.astype(np.int16),
            before=before, after=predict(predictor, adv, path), targets=targets, method=method, eps=eps,
            objective=objective,
        )  # fmt: skip
        if save_dir is not None:
            stem = unique_stem(Path(path).stem, stems)
            result.save(save_dir, stem)
            write_summary(save_dir / "summary.csv", result, first=len(results) == 0)
        results.append(result)
        if verbose:
            LOGGER.info(f"{path}: {_caption(before)} -> {_caption(result.after)}, Linf {result.linf * 255:.1f}/255, "
                        f"L2 {result.l2:.3f}")  # fmt: skip
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
    supported = isinstance(net, ClassificationModel) or isinstance(net, DetectionModel) and task in PREDICTORS
    if not supported or isinstance(net, RTDETRDetectionModel):
        kind = "RT-DETR" if isinstance(net, RTDETRDetectionModel) else task
        raise ValueError(
            f"model={label} is a {kind} model: attack supports YOLO {', '.join(PREDICTORS)} models, e.g. a yolov8n, "
            "yolov8n-seg or yolov8n-cls checkpoint"
        )
    return net, train_args, task


def setup(net: nn.Module, train_args: dict, imgsz, conf: float, iou: float, device, task: str):
    """Return the attacked copy, the task's Ultralytics predictor on another copy, the inference size and the stride."""
    import importlib

    from ultralytics.utils.checks import check_imgsz
    from ultralytics.utils.torch_utils import select_device

    dev = select_device(device, verbose=False)
    victim = attack_copy(net, train_args, dev)
    stride = max(int(net.stride.max()), 32)  # as AutoBackend reports it to the predictor
    size = check_imgsz(imgsz or train_args.get("imgsz", 640), stride=stride, min_dim=2)
    size = size[0] if task == "classify" else size  # a classifier crops a square
    overrides = {"conf": conf, "iou": iou, "imgsz": size, "device": device, "batch": 1, "rect": True,
                 "mode": "predict", "save": False, "verbose": False}  # fmt: skip  (Model.predict's settings)
    module, name = PREDICTORS[task].rsplit(".", 1)
    predictor = getattr(importlib.import_module(module), name)(overrides=overrides)
    predictor.setup_model(net, verbose=False)  # a deepcopy, fused for inference
    return victim, predictor, size, stride


def predict(predictor, image: np.ndarray, path: str):
    """Return the predictor's `Results` on one BGR image, with `path` as its source."""
    result = predictor(source=[image])[0]
    result.path = path
    return result


def original_targets(batch: dict, params: dict, shape: tuple) -> dict:
    """Return a one-image batch's targets (the inverse of `target_batch`): classes, and boxes in the pixels of the
    original image of `shape` (H, W, 3), as `AdversarialResult.targets` reports them."""
    from ultralytics.utils.ops import scale_boxes, xywh2xyxy

    h, w = batch["img"].shape[-2:]
    xyxy = xywh2xyxy(batch["bboxes"] * batch["bboxes"].new_tensor([w, h, w, h]))
    xyxy = scale_boxes((h, w), xyxy, shape[:2], ratio_pad=(params["ratio"], (params["left"], params["top"])))
    return {"source": "predictions", "cls": batch["cls"].view(-1).long().cpu().numpy(), "xyxy": xyxy.cpu().numpy()}


def target_batch(img: torch.Tensor, targets: dict, params: dict) -> dict:
    """Return a one-image Ultralytics batch: the letterboxed clean image and the targets mapped into its frame."""
    from ultralytics.utils.ops import xyxy2xywh

    r = params["ratio"][0]
    h, w = img.shape[-2:]
    xyxy = torch.as_tensor(targets["xyxy"], dtype=torch.float32).view(-1, 4) * r
    xyxy += torch.tensor([params["left"], params["top"]] * 2, dtype=torch.float32)
    bboxes = xyxy2xywh(xyxy) / torch.tensor([w, h, w, h], dtype=torch.float32)
    n = len(bboxes)
    return {
        "img": img,
        "cls": torch.as_tensor(targets["cls"], dtype=torch.float32).view(n, 1).to(img.device),
        "bboxes": bboxes.to(img.device),
        "batch_idx": torch.zeros(n, device=img.device),
    }


def dataset_labels(data: str, split: str, net: nn.Module, task: str = "detect"):
    """Return a `labels(path, shape) -> targets` reader of a dataset's labels, and the split's images.

    Detection and segmentation read YOLO label files (a polygon's bounding box for segments); classification reads
    each image's class from its folder (`<split>/<class name>/image.png`).

    Raises:
        ValueError: If the split is missing, or a label's class is outside the model's classes.
    """
    from ultralytics.data.utils import (
        check_cls_dataset,
        check_det_dataset,
        img2label_paths,
    )

    from yolo_advamd.data import resolve_dataset

    info = (check_cls_dataset if task == "classify" else check_det_dataset)(resolve_dataset(data))
    if not info.get(split):
        splits = [s for s in ("train", "val", "test") if info.get(s)]
        raise ValueError(f"split={split} is not in data={data}: choose one of {', '.join(splits)}, e.g. split=val")
    nc = int(net.nc) if hasattr(net, "nc") else len(net.names)
    if task == "classify":
        index = {str(name): i for i, name in net.names.items()}

        def folder_class(path: str, shape: tuple) -> dict:
            """Return the class of the image at `path`: the name of its folder."""
            name = Path(path).parent.name
            if name not in index:
                raise ValueError(f"{path}: folder {name!r} is not one of the model's classes: is data={data} its dataset?")
            return {"source": "labels", "cls": [index[name]]}

        return folder_class, str(Path(info[split]) / "*" / "*.*")

    def labels(path: str, shape: tuple) -> dict:
        """Return the ground truth of the image at `path` (shape (H, W, 3)) in pixels; no label file: no objects."""
        if not Path(path).is_file():
            raise ValueError(f"data={data} gives labels to image files only: pass image paths as source, not {path}")
        file = Path(img2label_paths([str(path)])[0])
        rows = [line.split() for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []
        cls, xyxy = [], []
        for row in rows:
            c, coords = int(float(row[0])), np.array(row[1:], dtype=np.float32)
            if not 0 <= c < nc:
                raise ValueError(f"{file}: class {c} is outside the model's {nc} classes: is data={data} its dataset?")
            if len(coords) == 4:  # x y w h
                (x, y, bw, bh) = coords
                box = [x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2]
            else:  # a polygon x1 y1 x2 y2 ...: its bounding box, as Ultralytics makes detection labels
                box = [*coords[0::2].min(keepdims=True), *coords[1::2].min(keepdims=True),
                       *coords[0::2].max(keepdims=True), *coords[1::2].max(keepdims=True)]  # fmt: skip
            cls.append(c)
            xyxy.append(np.array(box, dtype=np.float32) * np.array([shape[1], shape[0]] * 2, np.float32))
        return {"source": "labels", "cls": np.array(cls, int), "xyxy": np.array(xyxy, np.float32).reshape(-1, 4)}

    return labels, info[split]


def _enlarged(results, s: int):
    """Return a copy of `results` on its image enlarged `s` times (nearest neighbour), boxes scaled alike (masks stay
    at their resolution: Ultralytics' plot scales them to the image)."""
    if s == 1:
        return results
    from ultralytics.engine.results import Results

    image = cv2.resize(results.orig_img, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    if results.probs is not None:
        return Results(image, path=results.path, names=results.names, probs=results.probs.data)
    data = results.boxes.data.clone()
    data[:, :4] *= s
    masks = None if results.masks is None else results.masks.data
    return Results(image, path=results.path, names=results.names, boxes=data, masks=masks)


def _caption(results) -> str:
    """Describe a prediction in a few words: its detections, or a classifier's top-1 and confidence."""
    if results.probs is not None:
        return f"{results.names[results.probs.top1]} ({float(results.probs.top1conf):.2f})"
    return f"{len(results.boxes)} detections"


def unique_stem(stem: str, used: set) -> str:
    """Return `stem`, or `stem_2`, `stem_3`, ... if already used (images of the same name in different folders)."""
    out, i = stem, 1
    while out in used:
        i += 1
        out = f"{stem}_{i}"
    used.add(out)
    return out


def write_summary(file: Path, result: AdversarialResult, first: bool) -> None:
    """Append one image's summary (and the header for the first) to the run's `summary.csv`."""
    row = {**result.summary(), "adversarial": str(result.files.get("adversarial", ""))}
    with open(file, "w" if first else "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(row))
        if first:
            writer.writeheader()
        writer.writerow(row)
