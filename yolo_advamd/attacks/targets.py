"""What an attack pushes against: a batch's ground truth, or the attacked model's own predictions on its clean images.

An attack made from the true labels writes them into its perturbation (label leaking, Kurakin et al., ICLR 2017); made
from the model's predictions (`attack_labels=pred`) it carries only what the model already sees. Training, validation
and the attack API (which attacks on predictions when it has no labels) all take their targets from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from yolo_advamd.attacks.objectives import frozen

PRED_IOU = 0.7  # NMS IoU of the predictions, Ultralytics' predict default


def attack_targets(model: nn.Module, batch: dict, labels: str = "gt", conf: float = 0.25) -> dict:
    """Return the batch whose targets an attack on `model` pushes against: `batch` itself for `labels="gt"`, the model's
    own predictions on `batch["img"]` for `labels="pred"` (`predicted_targets`)."""
    return batch if labels == "gt" else predicted_targets(model, batch, conf)


@torch.no_grad()
def predicted_targets(
    model: nn.Module, batch: dict, conf: float = 0.25, iou: float = PRED_IOU, max_det: int = 300
) -> dict:
    """Return `batch` with its targets replaced by `model`'s own predictions on `batch["img"]`, in the batch's layout.

    A classifier's target is its top-1 class (`cls` (B,)). A detector's are its detections above `conf` after NMS, as
    Ultralytics' predictor keeps them: `cls` (n, 1), `bboxes` (n, 4) normalized xywh clipped to the image, `batch_idx`
    (n,) sorted by image. A segmentation model's also carry their masks, cropped to their boxes at the batch's mask
    resolution and in its layout (`overlap_mask`: one (B, h, w) map where each image's i-th object is i + 1, objects
    ordered by decreasing mask area so smaller ones lie on top, as Ultralytics builds it; else (n, h, w)), and the
    matching `sem_masks` when the batch has them.

    The model runs in its own mode (a model being trained: on batch statistics, the function an attack on it
    differentiates) without side effects (`frozen`); a detection head in train mode decodes its output for this pass
    (`decoded`).

    Args:
        model (nn.Module): The attacked Ultralytics model (classifier, detector or segmentation model), fp32.
        batch (dict): A preprocessed batch: `img` (B, 3, H, W) in [0, 1] and its targets, if any.
        conf (float): Confidence above which a detection is a target.
        iou (float): NMS IoU threshold.
        max_det (int): Most detections kept per image.

    Returns:
        (dict): A new batch: `batch`'s entries, with `cls` (and `bboxes`, `batch_idx`, `masks`, `sem_masks`) replaced.
    """
    from ultralytics.nn.tasks import ClassificationModel
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import clip_boxes, xyxy2xywh

    img = batch["img"]
    with frozen(model), decoded(model):
        preds = model(img)
    if isinstance(model, ClassificationModel):
        logits = preds[1] if isinstance(preds, tuple) else preds  # eval mode: (probabilities, logits)
        return {**batch, "cls": logits.argmax(1)}
    head = model.model[-1]
    decoded_out, proto = preds[0] if isinstance(preds[0], tuple) else (preds[0], None)  # segment: (decoded, proto)
    end2end = getattr(head, "end2end", False)
    dets = non_max_suppression(decoded_out, conf, iou, max_det=max_det, nc=head.nc, end2end=end2end)
    h, w = img.shape[-2:]
    for d in dets:
        clip_boxes(d[:, :4], (h, w))
    masks = None
    if proto is not None and "masks" in batch:  # each image's objects by decreasing mask area, as the overlap map needs
        masks = [instance_masks(proto[i], d, (h, w), batch["masks"].shape[-2:]) for i, d in enumerate(dets)]
        order = [m.flatten(1).sum(1).argsort(descending=True, stable=True) for m in masks]
        dets, masks = [d[o] for d, o in zip(dets, order)], [m[o] for m, o in zip(masks, order)]
    n = torch.tensor([len(d) for d in dets], device=img.device)
    boxes = torch.cat(dets)
    out = {
        **batch,
        "cls": boxes[:, 5:6],
        "bboxes": xyxy2xywh(boxes[:, :4]) / img.new_tensor([w, h, w, h]),
        "batch_idx": torch.repeat_interleave(torch.arange(len(dets), device=img.device), n).float(),
    }
    if masks is not None:
        out.update(mask_layout(masks, [d[:, 5] for d in dets], model.args.overlap_mask, "sem_masks" in batch))
    return out


def instance_masks(proto: torch.Tensor, dets: torch.Tensor, imgsz: tuple, size: tuple) -> torch.Tensor:
    """Return the (n, *size) float masks of one image's detections (boxes, conf, cls, mask coefficients), cropped to
    their boxes, at the batch's mask resolution `size` (Ultralytics' `process_mask` at its prototypes' resolution)."""
    from ultralytics.utils.ops import process_mask

    masks = process_mask(proto, dets[:, 6:], dets[:, :4], imgsz, upsample=False).float()
    if masks.shape[-2:] != tuple(size) and len(masks):
        masks = F.interpolate(masks[None], size, mode="nearest")[0]
    return masks.new_zeros(0, *size) if not len(masks) else masks


def mask_layout(masks: list[torch.Tensor], cls: list[torch.Tensor], overlap: bool, semantic: bool) -> dict:
    """Return `masks` (per image, (n_i, h, w), by decreasing area) in a batch's layout, with `sem_masks` if asked.

    The overlap map gives each pixel the index + 1 of the last (smallest) object covering it, as Ultralytics'
    `polygons2masks_overlap`; `sem_masks` give each pixel that object's class (0 where none), as its `Format` does.
    """
    index = [
        (m * torch.arange(1, len(m) + 1, device=m.device).view(-1, 1, 1)).amax(0)
        if len(m)
        else m.new_zeros(m.shape[1:])
        for m in masks
    ]
    out = {"masks": torch.stack(index) if overlap else torch.cat(masks)}
    if semantic:
        out["sem_masks"] = torch.stack([torch.cat([c.new_zeros(1), c])[i.long()] for i, c in zip(index, cls)]).float()
    return out


@contextlib.contextmanager
def decoded(model: nn.Module) -> Iterator[nn.Module]:
    """Make a detection head in train mode return its decoded, inference-style output, the rest of the model untouched.

    Only the head module's own `training` flag is cleared (its layers, BN included, keep their mode), so the head's
    forward takes Ultralytics' inference path on the features the train-mode model computed. Restored on exit.
    """
    head = model.model[-1] if hasattr(model, "model") else model
    training = head.training
    head.training = False
    try:
        yield model
    finally:
        head.training = training
