"""Defensive distillation's class loss: the student's class scores softened at a temperature T learn the frozen
teacher's soft labels (Papernot et al., S&P 2016), mixed with the ground-truth class loss.

The teacher's soft labels are its scores at the temperature it was trained at. Papernot et al. train the teacher at T
and read it at T; our teacher, a checkpoint trained at T = 1, is read at 1: a network trained at T and divided by T
is the function a network trained at 1 learns, so sigmoid(z_T) stands in for their soft labels. (Reading ours at T
would give near-uniform targets, sigmoid(z_T / T) ≈ 1/2, and keep the student's logits at the teacher's: no defense.)
The student at T matches them when its logits are T times the teacher's, where Papernot et al.'s student, trained
from scratch at T, ends. Ours starts there (`scale_class_logits`: the teacher's class layers times T) instead of
growing its logits T-fold in a fine-tune: started at the teacher's own logits, a 100-fold gap, its soft term grew
over 5 epochs and its mAP fell (docs/results/discussion.md).

A detector or segmenter scores each anchor and class with a sigmoid: per element, the soft term is the BCE of
sigmoid(z_S / T) against sigmoid(z_T) over every anchor (foreground and background), normalized as Ultralytics
normalizes its class BCE (by the sum of the assigned target scores) and scaled by its `cls` gain. A classifier scores
with a softmax: the soft term is the cross-entropy of softmax(z_S / T) against softmax(z_T), the mean over the batch.
Both are multiplied by T², Hinton et al.'s scaling (their gradients shrink as 1 / T²). Deployed at T = 1, the
student's T-fold logits saturate its scores: what masks its gradients. The class term trained is
`(1 - hard) * soft + hard * ground truth`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_logits(preds) -> list[torch.Tensor]:
    """Return a model output's class logits: (B, anchors, nc) per detection head branch, or a classifier's (B, nc).

    Args:
        preds: A model's output in train or eval mode: a head's dict (`scores` (B, nc, anchors); an end-to-end head's
            `one2many` and `one2one` dicts), the (decoded, dict) tuple of eval mode, a classifier's logits or its
            (probabilities, logits) tuple.

    Returns:
        (list[torch.Tensor]): One tensor per branch, in the order `ViewLoss.heads` lists the criterion's parts.
    """
    if isinstance(preds, (list, tuple)):
        preds = preds[1]
    if not isinstance(preds, dict):
        return [preds]
    branches = [preds["one2many"], preds["one2one"]] if "one2many" in preds else [preds]
    return [b["scores"].permute(0, 2, 1) for b in branches]


@torch.no_grad()
def scale_class_logits(model: nn.Module, factor: float) -> None:
    """Multiply a model's class logits by `factor`, exactly: the weight and bias of the last layer of each class branch
    (a detect or segment head's `cv3` and end-to-end `one2one_cv3` convolutions, a classify head's `linear`)."""
    head = model.model[-1]
    layers = [branch[-1] for name in ("cv3", "one2one_cv3") for branch in getattr(head, name, None) or ()]
    layers = layers or [getattr(head, "linear", None)]
    if not all(isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is not None for layer in layers):
        raise TypeError(f"method=distill needs a detect, segment or classify head, not {type(head).__name__}")
    for layer in layers:
        layer.weight.mul_(factor)
        layer.bias.mul_(factor)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, batch: dict) -> list[torch.Tensor]:
    """Run the frozen teacher on the clean images; return its class logits (`class_logits`), detached."""
    return class_logits(teacher(batch["img"]))


class SoftTargets:
    """Stand in for a detection criterion's class BCE (`v8DetectionLoss.bce`): the soft and the hard class terms mixed.

    Called by the criterion as `bce(pred_scores, target_scores)` (both (B, anchors, nc)), it returns the element-wise
    class loss `(1 - hard) * T² * BCE(z_S / T, sigmoid(z_T)) + hard * BCE(z_S, target_scores)`, which the
    criterion sums, normalizes and scales by its `cls` gain as it does its own BCE; the box, DFL and mask terms stay
    Ultralytics' own on the ground truth. `items` keeps each term as the criterion would log it.

    Attributes:
        teacher (torch.Tensor): The teacher's class logits z_T (B, anchors, nc).
        temperature (float): T.
        hard (float): The weight of the ground-truth term.
        gain (float): The criterion's `cls` gain.
        items (dict): After a call, `cls_loss` (the ground-truth term) and `soft_loss` (the soft term), detached.
    """

    def __init__(self, teacher: torch.Tensor, temperature: float, hard: float, gain: float):
        """Hold the teacher's logits and the loss settings for one call of the criterion."""
        self.teacher, self.temperature, self.hard, self.gain, self.items = teacher, temperature, hard, gain, {}

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the element-wise class loss (B, anchors, nc) and keep its two terms in `items`."""
        t = self.temperature
        teacher = self.teacher.to(pred.dtype).sigmoid()
        soft = F.binary_cross_entropy_with_logits(pred / t, teacher, reduction="none") * t**2
        truth = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        norm = target.sum().clamp(min=1) / self.gain  # as the criterion normalizes and scales its class BCE
        self.items = {"cls_loss": truth.detach().sum() / norm, "soft_loss": soft.detach().sum() / norm}
        return (1 - self.hard) * soft + self.hard * truth


def soft_cross_entropy(
    logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, hard: float
) -> tuple[torch.Tensor, dict]:
    """Return a classifier's distillation loss and its items: `(1 - hard) * T² * CE(softmax(z_T), z_S / T) +
    hard * CE(labels, z_S)`, each the mean over the batch, as `v8ClassificationLoss` takes its cross-entropy.

    Args:
        logits (torch.Tensor): The student's logits z_S (B, nc).
        teacher (torch.Tensor): The teacher's logits z_T (B, nc).
        labels (torch.Tensor): The true classes (B,).
        temperature (float): T.
        hard (float): The weight of the ground-truth term.

    Returns:
        (tuple): The loss, and `loss` (the ground-truth term) and `soft_loss` (the soft term), detached.
    """
    t = temperature
    soft = F.cross_entropy(logits / t, teacher.to(logits.dtype).softmax(1)) * t**2
    truth = F.cross_entropy(logits, labels.long())
    return (1 - hard) * soft + hard * truth, {"loss": truth.detach(), "soft_loss": soft.detach()}
