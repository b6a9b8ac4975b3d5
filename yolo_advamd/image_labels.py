"""Targets of single images for the attack API: a dataset's ground truth per image file (YOLO label files, or a
classification dataset's class folders), and targets carried between the original image's pixels and the model's
letterboxed input.

Examples:
    >>> labels, images = dataset_labels("data/digits-det.yaml", "val", model)
    >>> targets = labels(path, image.shape)  # {"source": "labels", "cls": (n,), "xyxy": (n, 4) in pixels}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo_advamd.tasks import TASKS


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

    info = (check_cls_dataset if TASKS[task].classifier else check_det_dataset)(resolve_dataset(data))
    if not info.get(split):
        splits = [s for s in ("train", "val", "test") if info.get(s)]
        raise ValueError(f"split={split} is not in data={data}: choose one of {', '.join(splits)}, e.g. split=val")
    nc = int(net.nc) if hasattr(net, "nc") else len(net.names)
    if TASKS[task].classifier:
        index = {str(name): i for i, name in net.names.items()}

        def folder_class(path: str, shape: tuple) -> dict:
            """Return the class of the image at `path`: the name of its folder."""
            name = Path(path).parent.name
            if name not in index:
                raise ValueError(
                    f"{path}: folder {name!r} is not one of the model's classes: is data={data} its dataset?"
                )
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
                box = [
                    *coords[0::2].min(keepdims=True),
                    *coords[1::2].min(keepdims=True),
                    *coords[0::2].max(keepdims=True),
                    *coords[1::2].max(keepdims=True),
                ]
            cls.append(c)
            xyxy.append(np.array(box, dtype=np.float32) * np.array([shape[1], shape[0]] * 2, np.float32))
        return {"source": "labels", "cls": np.array(cls, int), "xyxy": np.array(xyxy, np.float32).reshape(-1, 4)}

    return labels, info[split]


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
