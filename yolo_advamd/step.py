"""One AdvAmd step, as the paper's Algorithm 1 writes it: attack the batch, make its views, weight their losses,
backward.

`advamd_step` is called by `AdvAmdTrainer.preprocess_batch` inside Ultralytics' own loop:
    1. attack: `AttackStage` adds the adversarial images x + δ and the mediate images x + φδ (eq. 4, 5); with FGSM
       on the current model, the benign view runs first and its input gradient is the attack's (no pass of its own);
       a method without an attack (`Method.attacks`: distillation) skips it;
    2. views: each view is a batch for the model (`Method.view_batch`): its images, its β, its BN (the adversarial
       view through the auxiliary BN), its class weights Ā (eq. 6) or, for UDFA, the teacher's features to align with
       (for distillation, the teacher's class logits);
    3. weighted losses: `model(view)` runs Ultralytics' detection loss through `ViewLoss`, which applies the view's
       β and Ā;
    4. backward: every view but one is backwarded here, one at a time (peak memory of one view), and the last view is
       returned for the loop's own `model(batch)` and backward, so the optimizer steps on Σ β ∇L of all views.
`ViewGuard` routes each view to its BN inside `model(view)`, also the loop's, and holds a step with a non-finite view.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from yolo_advamd.align import captured
from yolo_advamd.nn.dual_bn import aux_bn
from yolo_advamd.views import View


def advamd_step(model, module, batch: dict, stage, method, abar: torch.Tensor | None, backward) -> dict:
    """Attack `batch`, train all but the last of its views one forward and backward at a time, and return the last.

    The returned view batch is for Ultralytics' own loop, whose `model(batch)` and backward train it and log every
    view's loss (`View.logged`). Gradients of all views add up in `.grad` before the loop's optimizer step; peak
    memory stays that of one view.

    Args:
        model (callable): The training model as the loop calls it (DDP-wrapped under DDP).
        module (nn.Module): The unwrapped model, with a `ViewLoss` criterion and a `ViewGuard`.
        batch (dict): A preprocessed batch, `img` float in [0, 1].
        stage (AttackStage | None): Adds `img_adv` and `img_med`; None for a method that attacks nothing
            (`Method.attacks`, e.g. distillation).
        method (Method): The run's method (`yolo_advamd.methods`): which views, through which BN, with which weights.
        abar (torch.Tensor | None): Per-class weights (nc,) for the adversarial view's classification loss.
        backward (callable): `backward(loss)` as the loop does it (AMP scaling, DDP world size).

    Returns:
        (dict): The view batch for the loop's pass, with the attacked batch's `img_med`, `img_adv`.
    """
    reuse = stage is not None and stage.reuses_gradient and method.args.beta1 > 0 and len(method.views(False)) > 1
    order, trained = method.views(reuse), {}
    # 1. attack: x_adv = x + δ, x_med = x + φδ (with FGSM from the benign pass's gradient when `reuse`)
    if reuse:
        img = batch["img"].detach().requires_grad_(True)
        trained["benign"] = train_view(model, method.view_batch({**batch, "img": img}, "benign", abar), backward)
        batch = stage({**batch, "img": img.detach()}, model=module, grad=img.grad)
    elif stage is not None:
        batch = stage(batch, model=module)
    method.prepare(batch)  # e.g. UDFA's teacher features, distillation's teacher logits, on the clean images
    # 2-4. views, each weighted by its β (and Ā) in ViewLoss, backwarded in turn; the last one is the loop's
    for name in order[:-1]:
        if name not in trained:
            trained[name] = train_view(model, method.view_batch(batch, name, abar), backward)
    view = method.view_batch(batch, order[-1], abar)
    view["view"].logged = logged_items(method, order, trained)
    return view


def train_view(model, view: dict, backward) -> dict:
    """Forward one view through `model` and backward its loss; return its loss items.

    Finiteness is not checked here (that would sync the device on every view): the model's `ViewGuard` checks every
    view of an optimizer step at once, and a non-finite one makes the trainer skip that step.

    Args:
        model (callable): The training model as the loop calls it (DDP-wrapped under DDP):
            `model(batch) -> (loss, items)`.
        view (dict): A view batch (`Method.view_batch`).
        backward (callable): `backward(loss)` as the loop does it (AMP scaling, DDP world size).
    """
    loss, items = model(view)
    backward(loss.sum())
    return items


def logged_items(method, order: tuple[str, ...], trained: dict) -> dict:
    """Return the loss items of the views `trained` so far, in log order, with a slot for the loop's view."""
    items = dict(trained.get("benign", {}))
    for name in ("med", "adv"):
        if name in order:
            items[method.column(name)] = sum(trained[name].values()) if name in trained else None
    return items


class ViewGuard:
    """Forward hooks that let each view batch choose its BN, and undo the BN statistics of a step with a non-finite
    view.

    Registered on the trained model (the module inside DDP), they act on calls with a view batch (a `View` under
    `view`): the model runs on its auxiliary BNs when the view asks (`aux_bn`, see `dual_bn.aux_bn`), undone even when
    the forward raises, so it also holds for the view Ultralytics' loop runs itself. Each view's loss is kept (no
    device sync); `pop_bad()`, called once per optimizer step, checks them all at once and, if one is not finite, puts
    back the BN running statistics from the start of the step's window, as the skipped step leaves the weights. For
    UDFA's adversarial view (`View.align`) it also captures the neck features the alignment loss needs. Any other call
    (image tensors, validator batches) passes through.

    Examples:
        >>> guard = ViewGuard(model)
        >>> loss, items = model(method.view_batch(batch, "adv", abar))  # through the auxiliary BNs
        >>> guard.pop_bad()  # {} or e.g. {"adv": nan}
    """

    def __init__(self, model: torch.nn.Module):
        """Register the hooks on `model`."""
        self.model = model
        self.losses = []  # (view name, detached loss) since the last pop_bad()
        self.stats = self.routing = None  # BN statistics at the window's start; the routing of the current view
        model.register_forward_pre_hook(self.enter)
        model.register_forward_hook(self.exit, always_call=True)

    def enter(self, module: torch.nn.Module, args: tuple) -> None:
        """Before a view's forward: keep the BN statistics if the window starts here, route to the auxiliary BNs."""
        view = args[0].get("view") if args and isinstance(args[0], dict) else None
        if not isinstance(view, View):
            return
        if self.stats is None:
            self.stats = {k: v.clone() for k, v in module.named_buffers() if "running_" in k or "num_batches" in k}
        self.routing = ExitStack()
        if view.aux_bn:
            self.routing.enter_context(aux_bn(module))
        if view.align is not None:  # UDFA: the student's neck features, for ViewLoss to align with the teacher's
            view.align = {**view.align, "student": self.routing.enter_context(captured(module, view.align["layers"]))}

    def exit(self, module: torch.nn.Module, args: tuple, output) -> None:
        """After a view's forward (also when it raised): restore the routing and keep the view's loss."""
        if self.routing is None:
            return
        self.routing.close()
        self.routing = None
        if isinstance(output, tuple):
            self.losses.append((args[0]["view"].name, output[0].detach().sum()))

    def pop_bad(self) -> dict:
        """Return the views with a non-finite loss since the last call, restoring BN statistics if any (one sync)."""
        values = torch.stack([loss.float() for _, loss in self.losses]).tolist() if self.losses else []
        bad = {name: v for (name, _), v in zip(self.losses, values) if not math.isfinite(v)}
        if bad:
            self.model.load_state_dict(self.stats, strict=False)
        self.losses, self.stats = [], None
        return bad
