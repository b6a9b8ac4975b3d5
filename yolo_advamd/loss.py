"""The AdvAmd criterion: Ultralytics' own detection loss, scaled and class-weighted per view as the batch asks."""

from __future__ import annotations

import contextlib

import torch

VIEW_KEYS = ("loss_scale", "class_weights", "view_items")  # what a view batch may carry for the criterion


class ViewLoss:
    """Wrap a model's Ultralytics criterion so that each view's batch sets its own loss weight and class weights.

    A batch without the keys in `VIEW_KEYS` (e.g. from the validator) gives exactly the wrapped criterion's result.
    `class_weights` (nc,) multiplies the classification BCE through `v8DetectionLoss.class_weights`, Ultralytics'
    per-class hook, on top of any weights already there (`cls_pw`). Like Ultralytics, that weights the BCE of positive
    and negative anchors alike, not only the y = 1 term of the paper's eq. 6. `view_items` (a dict of detached
    losses of the other views) is merged into the returned loss items, so Ultralytics logs every view.

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
        """Compute the loss of one view: `loss_scale * criterion(preds, batch)`, with the view's class weights."""
        weights = batch.get("class_weights")
        if weights is None:
            loss, items = self.criterion(preds, batch)
        else:
            heads = self.heads()
            saved = [h.class_weights for h in heads]
            try:
                for h, w in zip(heads, saved):
                    view = weights.to(h.device, torch.float32).view(1, 1, -1)
                    h.class_weights = view if w is None else w * view
                loss, items = self.criterion(preds, batch)
            finally:
                for h, w in zip(heads, saved):
                    h.class_weights = w
        if "loss_scale" in batch:
            loss = loss * batch["loss_scale"]
        return loss, {**items, **batch.get("view_items", {})}


def wrap_criterion(model):
    """Give `model` a `ViewLoss` criterion (in place, idempotent) and return the model."""
    criterion = getattr(model, "criterion", None) or model.init_criterion()
    model.criterion = criterion if isinstance(criterion, ViewLoss) else ViewLoss(criterion)
    return model


def backward_extra_views(model, module, batch: dict, args, abar: torch.Tensor | None, backward) -> dict:
    """Run the mediate and adversarial views of one AdvAmd step, each forward then backward, one graph at a time.

    The benign view is left to Ultralytics' own loop: this marks `batch` with its `beta1` loss scale and the other
    views' loss items, so the loop's `model(batch)` returns `beta1 * L_B` and logs all three views. Gradients of the
    three views add up in `.grad` before the loop's optimizer step; peak memory stays that of one view.

    Args:
        model (callable): The training model as the loop calls it (DDP-wrapped under DDP): `model(batch) -> (loss, items)`.
        module (nn.Module): The unwrapped model, routed to its auxiliary BN for the adversarial view.
        batch (dict): A preprocessed batch holding `img_med` and `img_adv` (from `AttackStage`).
        args (SimpleNamespace): Settings with `mediate`, `aux_bn`, `advamd_loss`, `beta1`, `beta2`, `beta3`.
        abar (torch.Tensor | None): Per-class weights (nc,) for the adversarial view's classification loss.
        backward (callable): `backward(loss)` as the loop does it (AMP scaling, DDP world size).

    Returns:
        (dict): The names of the views whose loss was not finite, mapped to the loss: their backward was skipped and
            the BN running statistics their forward changed were restored.
    """
    from yolo_advamd.nn.dual_bn import aux_bn

    views = []
    if args.mediate and args.beta2 > 0:
        views.append(("med", "img_med", args.beta2, None, contextlib.nullcontext()))
    weights = abar if args.advamd_loss else None
    if args.beta3 > 0:
        views.append(("adv", "img_adv", args.beta3, weights, aux_bn(module) if args.aux_bn else contextlib.nullcontext()))
    items, bad = {}, {}
    for name, key, beta, weights, routing in views:
        view = {k: v for k, v in batch.items() if k not in {"img_med", "img_adv", *VIEW_KEYS}}
        view.update(img=batch[key], loss_scale=beta)
        if weights is not None:
            view["class_weights"] = weights
        stats = {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k}
        with routing:
            loss, view_items = model(view)
        loss = loss.sum()
        items[f"{name}_loss"] = sum(view_items.values())
        if torch.isfinite(loss):
            backward(loss)
        else:  # the forward may have put NaN into BN running statistics: undo it, skip this view
            module.load_state_dict(stats, strict=False)
            bad[name] = float(loss.detach())
    batch.update(loss_scale=args.beta1, view_items=items)
    return bad
