"""Feature alignment to a frozen teacher (UDFA): the student's neck features on adversarial images pulled toward the
teacher's neck features on the clean images.

UDFA (Xu et al., "Robust and Accurate Object Detection via Self-Knowledge Distillation", ICIP 2022; code
grispeut/udfa, `mmdet/models/detectors/base.py:train_step`) distills a detector into itself: the teacher is the
frozen starting checkpoint in eval mode, run on the clean images without gradients; the student is attacked (one FGSM
step on its own clean training loss) and its features on the adversarial images are aligned with the teacher's. The
loss is UDFA's decoupled squared error on every neck level that feeds the head: a ground-truth mask splits each level
into foreground and background, each part is a masked mean of the squared difference divided by 8, the parts are
averaged over the levels and weighted 1 (foreground) and 6 (background), UDFA's VOC weights (its COCO configs use 5
and 30, the same ratio: scale them with `beta3`). Each box marks the cells it covers on one level, chosen from its size
as UDFA does (`floor(log2(sqrt(w h) / 56))`, clamped to the levels there are). There is no projector: teacher and
student share the architecture.

Reused from Ultralytics' feature distillation (`ultralytics/nn/distill_model.py`):
`DistillationModel.get_distill_layers`
(the layers that feed the Detect head) and its picklable `FeatureHook`. Not reused: the `DistillationModel` wrapper (a
student-teacher module in every checkpoint, which validation and export would have to unwrap), its projector and its
teacher-score-weighted L2 loss (UDFA weighs by ground-truth masks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from ultralytics.nn.distill_model import DistillationModel, FeatureHook

FOREGROUND, BACKGROUND = 1.0, 6.0  # UDFA's VOC weights of the two parts (kd_neck_w, kd_neck_bg_w)
NORM = 8.0  # UDFA divides each masked mean by 8
LEVEL_SIZE = 56  # a box of sqrt(w h) = 56 * 2^l pixels goes to level l (UDFA's `_map_roi_levels`)


def neck_layers(model: nn.Module) -> list[int]:
    """Return the indices of the layers whose outputs feed the detection head (P3, P4, P5 for YOLOv8)."""
    return DistillationModel.get_distill_layers(model)[:-1]


@contextlib.contextmanager
def captured(model: nn.Module, layers: list[int]) -> Iterator[dict]:
    """Capture the outputs of `model.model[j]` for each j in `layers` during the block, as `{level: tensor}`.

    The hooks are removed on exit (also after an exception), so the model pickles and deep-copies as before.
    """
    feats = {}
    handles = [model.model[j].register_forward_hook(FeatureHook(feats, i)) for i, j in enumerate(layers)]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def level_masks(batch: dict, shapes: list[tuple[int, int]], imgsz: tuple[int, int]) -> list[torch.Tensor]:
    """Return a foreground mask (B, 1, h, w) per level: each box covers its cells on the level chosen for its size.

    Args:
        batch (dict): A preprocessed batch: `img` (B, 3, H, W), `bboxes` (n, 4) normalized xywh, `batch_idx` (n,).
        shapes (list[tuple[int, int]]): The (h, w) of each level's feature map, finest first.
        imgsz (tuple[int, int]): The (H, W) of the input images in pixels.

    Returns:
        (list[torch.Tensor]): One float mask per level, 1 on foreground cells.
    """
    H, W = imgsz
    boxes, idx, n = batch["bboxes"].float(), batch["batch_idx"].long().view(-1), batch["img"].shape[0]
    size = (boxes[:, 2] * W * boxes[:, 3] * H).clamp(min=1e-12).sqrt()
    levels = torch.floor(torch.log2(size / LEVEL_SIZE + 1e-6)).clamp(0, len(shapes) - 1).long()
    masks = []
    for level, (h, w) in enumerate(shapes):
        mask = boxes.new_zeros(n, 1, h, w)
        for (x, y, bw, bh), i in zip(boxes[levels == level].tolist(), idx[levels == level].tolist()):
            x1, x2 = math.floor((x - bw / 2) * w), math.ceil((x + bw / 2) * w)
            y1, y2 = math.floor((y - bh / 2) * h), math.ceil((y + bh / 2) * h)
            mask[i, 0, max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 1
        masks.append(mask)
    return masks


def alignment_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Return UDFA's decoupled feature-alignment loss between student and teacher features (lists, one per level).

    Per level, with d = (student - teacher)^2 and the mask m repeated over channels:
    `fg = sum(d m) / (max(1, sum(m)) * 8)`, `bg = sum(d (1 - m)) / (max(1, sum(1 - m)) * 8)`; the loss is
    `FOREGROUND * mean_levels(fg) + BACKGROUND * mean_levels(bg)`.
    """
    fg = bg = 0.0
    for s, t, m in zip(student, teacher, masks):
        d = (s.float() - t.float()).pow(2)
        m = m.to(d.dtype).expand_as(d)
        fg = fg + (d * m).sum() / (m.sum().clamp(min=1) * NORM)
        bg = bg + (d * (1 - m)).sum() / ((1 - m).sum().clamp(min=1) * NORM)
    return (FOREGROUND * fg + BACKGROUND * bg) / len(student)


@torch.no_grad()
def teacher_targets(teacher: nn.Module, batch: dict) -> dict:
    """Run the frozen teacher on the clean images and return what the student's features are aligned with.

    Returns:
        (dict): `layers` (the neck layers), `teacher` (their outputs, one per level) and `masks` (`level_masks`).
    """
    layers = neck_layers(teacher)
    with captured(teacher, layers) as feats:
        teacher(batch["img"])
    features = [feats[i] for i in range(len(layers))]
    return {
        "layers": layers,
        "teacher": features,
        "masks": level_masks(batch, [f.shape[-2:] for f in features], batch["img"].shape[-2:]),
    }
