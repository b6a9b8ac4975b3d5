"""The loss of one view: Ultralytics' own detection loss, scaled by the view's β and weighted by Ā in the paper's scope
(or UDFA's feature alignment, or defensive distillation's soft class targets), whatever view batch
`yolo_advamd.step` hands it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yolo_advamd.align import alignment_loss
from yolo_advamd.distill import SoftTargets, soft_cross_entropy


class ViewLoss:
    """Wrap a model's Ultralytics criterion so that each view's batch sets its own loss weight and class weights.

    A batch without a `View` under `view` (e.g. from the validator) gives exactly the wrapped criterion's result.
    The view's `class_weights` (nc,), the vulnerability Ā, weights the classification BCE (B, anchors, nc) through
    `v8DetectionLoss.class_weights`, Ultralytics' hook, on top of any weights already there, in one of two scopes
    (`abar_scope`):
        - "positive" (the paper's eq. 5 and 6, -Σ_k Ā_k y_k log p_k): on each foreground anchor, the BCE element of the
          class the assigner gave it is multiplied by that class's Ā; every other element (other classes, background
          anchors) keeps weight 1. With Ultralytics' IoU-aware soft target t ≤ 1 at that element, both of its parts,
          t·log p and (1 - t)·log(1 - p), are weighted; the normalization by the sum of target scores is unchanged.
          The assignment is the criterion's own, made on this view's predictions.
        - "all": class k's weight multiplies its BCE on every anchor, positive and negative alike (Ultralytics'
          per-class weighting; not the paper's y = 1 term only).
    A classifier's cross-entropy holds only the true-class term, so both scopes weight each image's cross-entropy by
    its class's Ā (the mean over the batch, as `v8ClassificationLoss` takes it).
    `View.logged` (the detached losses of the other views, in log order) completes the returned loss items, so
    Ultralytics logs every view: the benign view's own items come first, any other view's total goes in as its
    `View.column` (`med_loss`, `adv_loss`, UDFA's adversarial view as `align_loss`).
    A view with `distill` (defensive distillation) trains its class term on the teacher's soft targets
    (`yolo_advamd.distill`) and logs the ground-truth class term under the task's own name and the soft one as
    `soft_loss`.

    Attributes:
        criterion: The wrapped criterion (`v8DetectionLoss`, `E2ELoss`, ...); other attributes are delegated to it.
    """

    def __init__(self, criterion):
        """Wrap `criterion`, the model's `init_criterion()` result."""
        self.criterion = criterion

    def __getattr__(self, name):
        """Delegate everything else (e.g. `E2ELoss.update()`) to the wrapped criterion."""
        if name == "criterion":  # not yet set (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.criterion, name)

    def heads(self) -> list:
        """Return the `v8DetectionLoss`-like parts that hold `class_weights` (two for end-to-end models)."""
        parts = [getattr(self.criterion, k, None) for k in ("one2many", "one2one")]
        return [p for p in (self.criterion, *parts) if p is not None and hasattr(p, "class_weights")]

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict]:
        """Compute the loss of one view: `loss_scale * criterion(preds, batch)`, with the view's class weights.

        A view with `align` (UDFA's adversarial view) is scored by the alignment of the student's neck features,
        captured during its forward pass (`ViewGuard`), with the teacher's: `alignment_loss` times the batch size, as
        Ultralytics scales its detection loss, so the two keep UDFA's 1:1 ratio.
        """
        view = batch.get("view")
        weights = view.class_weights if view is not None else None
        if view is not None and view.align is not None:
            a = view.align
            value = alignment_loss([a["student"][i] for i in range(len(a["teacher"]))], a["teacher"], a["masks"])
            loss, items = value * batch["img"].shape[0], {"align": value.detach()}
        elif view is not None and view.distill is not None:
            loss, items = self.distilled(preds, batch, **view.distill)
        elif weights is None:
            loss, items = self.criterion(preds, batch)
        elif not (heads := self.heads()):  # a classifier's cross-entropy has no per-class hook: weight each image
            logits = preds[1] if isinstance(preds, (list, tuple)) else preds
            cls = batch["cls"].long()
            loss = (F.cross_entropy(logits, cls, reduction="none") * weights.to(logits.device)[cls]).mean()
            items = {"loss": loss.detach()}
        else:
            saved = [(h.class_weights, h.assigner) for h in heads]
            try:
                for h, (w, assigner) in zip(heads, saved):
                    weights = weights.to(h.device, torch.float32)
                    if view.abar_scope == "all":
                        scaled = weights.view(1, 1, -1)
                        h.class_weights = scaled if w is None else w * scaled
                    else:
                        h.assigner = PositiveWeights(h, weights)
                loss, items = self.criterion(preds, batch)
            finally:
                for h, (w, assigner) in zip(heads, saved):
                    h.class_weights, h.assigner = w, assigner
        if view is None:
            return loss, items
        loss = loss * view.loss_scale
        if view.logged is not None:
            items = (
                {**items, **view.logged} if view.name == "benign" else {**view.logged, view.column: sum(items.values())}
            )
        return loss, items

    def distilled(
        self, preds, batch: dict, teacher: list, temperature: float, hard: float
    ) -> tuple[torch.Tensor, dict]:
        """Return the criterion's loss with its class term on the teacher's soft targets (`yolo_advamd.distill`).

        A detection criterion's class BCE is swapped for `SoftTargets` during the call (one per head branch, each
        with the teacher's logits of that branch), so the box, DFL and mask terms are its own; a classifier's
        cross-entropy becomes `soft_cross_entropy`.
        """
        if not (heads := self.heads()):
            logits = preds[1] if isinstance(preds, (list, tuple)) else preds
            return soft_cross_entropy(logits, teacher[0], batch["cls"], temperature, hard)
        soft = [SoftTargets(t, temperature, hard, h.hyp.cls) for h, t in zip(heads, teacher)]
        saved = [h.bce for h in heads]
        try:
            for h, s in zip(heads, soft):
                h.bce = s
            loss, items = self.criterion(preds, batch)
        finally:
            for h, bce in zip(heads, saved):
                h.bce = bce
        return loss, {**items, **soft[-1].items}  # an end-to-end criterion logs its one-to-one branch, the last


class PositiveWeights:
    """Stand in for a criterion's assigner: assign as it does, then weight only the assigned classes' BCE elements.

    After the assignment, the criterion's `class_weights` becomes a (B, anchors, nc) tensor of ones holding, at each
    foreground anchor's assigned class, that class's weight (times any weights the criterion had before), so the
    criterion's own `bce_loss *= class_weights` weights the positive terms only (see `ViewLoss`).
    """

    def __init__(self, head, weights: torch.Tensor):
        """Wrap the assigner of `head` (a `v8DetectionLoss`) with per-class `weights` (nc,)."""
        self.head, self.assigner, self.weights, self.base = head, head.assigner, weights, head.class_weights

    def __call__(self, *args, **kwargs) -> tuple:
        """Assign, set the criterion's element-wise class weights and return the assignment unchanged."""
        out = self.assigner(*args, **kwargs)
        labels, _, scores, fg = out[:4]
        w = torch.ones(scores.shape, device=scores.device, dtype=torch.float32)
        b, a = fg.nonzero(as_tuple=True)
        c = labels[b, a].long()
        w[b, a, c] = self.weights[c]
        self.head.class_weights = w if self.base is None else w * self.base
        return out


def wrap_criterion(model):
    """Give `model` a `ViewLoss` criterion (in place, idempotent) and return the model."""
    criterion = getattr(model, "criterion", None) or model.init_criterion()
    model.criterion = criterion if isinstance(criterion, ViewLoss) else ViewLoss(criterion)
    return model
