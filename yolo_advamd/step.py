"""One AdvAmd step, as the paper's Algorithm 1 writes it: attack the batch, make its views, weight their losses, backward.

`advamd_step` is called by `AdvAmdTrainer.preprocess_batch` inside Ultralytics' own loop:
    1. attack: `AttackStage` adds the adversarial images x + δ and the mediate images x + φδ (eq. 4, 5); with FGSM on the
       current model, the benign view runs first and its input gradient is the attack's (no pass of its own);
    2. views: each view is a batch for the model (`make_view`): its images, its β, its BN (the adversarial view through
       the auxiliary BN), its class weights Ā (eq. 6) or, for UDFA, the teacher's features to align with;
    3. weighted losses: `model(view)` runs Ultralytics' detection loss through `ViewLoss`, which applies the view's β and Ā;
    4. backward: every view but one is backwarded here, one at a time (peak memory of one view), and the last view is
       returned for the loop's own `model(batch)` and backward, so the optimizer steps on Σ β ∇L of all views.
`ViewGuard` routes each view to its BN inside `model(view)`, also the loop's, and holds a step with a non-finite view.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from yolo_advamd.align import captured, teacher_targets
from yolo_advamd.loss import item_name
from yolo_advamd.nn.dual_bn import aux_bn

VIEWS = {"benign": "img", "med": "img_med", "adv": "img_adv"}  # view name -> the batch key of its images
VIEW_KEYS = ("view", "loss_scale", "class_weights", "abar_scope", "aux_bn", "align", "view_items")  # a view batch's own


def advamd_step(model, module, batch: dict, stage, args, abar: torch.Tensor | None, backward, teacher=None) -> dict:
    """Attack `batch`, train all but the last of its views one forward and backward at a time, and return the last.

    The returned view batch is for Ultralytics' own loop, whose `model(batch)` and backward train it and log every
    view's loss (`view_items`). Gradients of all views add up in `.grad` before the loop's optimizer step; peak
    memory stays that of one view.

    Args:
        model (callable): The training model as the loop calls it (DDP-wrapped under DDP).
        module (nn.Module): The unwrapped model, with a `ViewLoss` criterion and a `ViewGuard`.
        batch (dict): A preprocessed batch, `img` float in [0, 1].
        stage (AttackStage): Adds `img_adv` and `img_med`.
        args (SimpleNamespace): Settings with `mediate`, `aux_bn`, `advamd_loss`, `abar_scope`, `beta1`, `beta2`,
            `beta3`.
        abar (torch.Tensor | None): Per-class weights (nc,) for the adversarial view's classification loss.
        backward (callable): `backward(loss)` as the loop does it (AMP scaling, DDP world size).
        teacher (nn.Module | None): UDFA's frozen teacher: the adversarial view's loss is then the alignment of the
            student's features with the teacher's on the clean images (see `yolo_advamd.align`).

    Returns:
        (dict): The view batch for the loop's pass, with `view_items` and the attacked batch's `img_med`, `img_adv`.
    """
    reuse = stage.reuses_gradient and args.beta1 > 0 and len(view_order(args, False)) > 1  # the benign pass gives δ
    order, trained = view_order(args, reuse), {}
    # 1. attack: x_adv = x + δ, x_med = x + φδ
    if reuse:
        img = batch["img"].detach().requires_grad_(True)
        trained["benign"] = train_view(model, make_view({**batch, "img": img}, "benign", args, abar), backward)
        batch = stage({**batch, "img": img.detach()}, model=module, grad=img.grad)
    else:
        batch = stage(batch, model=module)
    if teacher is not None:  # UDFA: the adversarial view is aligned with the teacher's features on the clean images
        batch["align"] = teacher_targets(teacher, batch)
    # 2-4. views, each weighted by its β (and Ā) in ViewLoss, backwarded in turn; the last one is the loop's
    for name in order[:-1]:
        if name not in trained:
            trained[name] = train_view(model, make_view(batch, name, args, abar), backward)
    view = make_view(batch, order[-1], args, abar)
    view["view_items"] = logged_items(order, trained, align=teacher is not None)
    return view


def make_view(batch: dict, name: str, args, abar: torch.Tensor | None) -> dict:
    """Return the batch of one view of an attacked batch, for `model(view)`: its images, loss scale, BN and weights.

    Args:
        batch (dict): A preprocessed batch; `img_med` and `img_adv` (from `AttackStage`) for those views.
        name (str): "benign" (β1, main BN), "med" (β2, main BN) or "adv" (β3, auxiliary BN if `aux_bn`, classification
            loss weighted by `abar` if `advamd_loss`).
        args (SimpleNamespace): Settings with `aux_bn`, `advamd_loss`, `abar_scope`, `beta1`, `beta2`, `beta3`.
        abar (torch.Tensor | None): Per-class weights (nc,) for the adversarial view's classification loss.

    Returns:
        (dict): The labels and view images of `batch`, `img` set to the view's images (the clean ones stay as
            `img_benign`) and the view keys of `VIEW_KEYS` set.
    """
    view = {k: v for k, v in batch.items() if k not in VIEW_KEYS}
    view.update(img=batch[VIEWS[name]], img_benign=batch["img"], view=name)
    view["loss_scale"] = {"benign": args.beta1, "med": args.beta2, "adv": args.beta3}[name]
    view["aux_bn"] = name == "adv" and args.aux_bn
    if name == "adv" and args.advamd_loss and abar is not None:
        view["class_weights"], view["abar_scope"] = abar, args.abar_scope
    if name == "adv" and "align" in batch:  # UDFA: the teacher's features to align with (`advamd_step`)
        view["align"] = batch["align"]
    return view


def view_order(args, reuse_gradient: bool) -> tuple[str, ...]:
    """Return the views an AdvAmd step trains, in the order they run; the last one is the training loop's own pass.

    The loop's pass is the benign view, except when the benign pass must come first to hand its input gradient to
    FGSM (`reuse_gradient`): then the loop runs the last extra view. Views with a zero β, or the mediate view with
    `mediate=False`, are left out (the benign view stays the loop's pass even with β1 = 0, as Ultralytics needs one).
    """
    extra = [n for n, on in (("med", args.mediate and args.beta2 > 0), ("adv", args.beta3 > 0)) if on]
    return ("benign", *extra) if reuse_gradient else (*extra, "benign")


def train_view(model, view: dict, backward) -> dict:
    """Forward one view through `model` and backward its loss; return its loss items.

    Finiteness is not checked here (that would sync the device on every view): the model's `ViewGuard` checks every
    view of an optimizer step at once, and a non-finite one makes the trainer skip that step.

    Args:
        model (callable): The training model as the loop calls it (DDP-wrapped under DDP): `model(batch) -> (loss, items)`.
        view (dict): A view batch from `make_view`.
        backward (callable): `backward(loss)` as the loop does it (AMP scaling, DDP world size).
    """
    loss, items = model(view)
    backward(loss.sum())
    return items


def logged_items(order: tuple[str, ...], trained: dict, align: bool = False) -> dict:
    """Return the loss items of the views `trained` so far, in log order, with a slot for the loop's view."""
    items = dict(trained.get("benign", {}))
    for name in ("med", "adv"):
        if name in order:
            items[item_name(name, align and name == "adv")] = sum(trained[name].values()) if name in trained else None
    return items


class ViewGuard:
    """Forward hooks that let each view batch choose its BN, and undo the BN statistics of a step with a non-finite view.

    Registered on the trained model (the module inside DDP), they act on calls with a view batch (`make_view`): the
    model runs on its auxiliary BNs when the view asks (`aux_bn`, see `dual_bn.aux_bn`), undone even when the forward
    raises, so it also holds for the view Ultralytics' loop runs itself. Each view's loss is kept (no device sync);
    `pop_bad()`, called once per optimizer step, checks them all at once and, if one is not finite, puts back the BN
    running statistics from the start of the step's window, as the skipped step leaves the weights. For UDFA's
    adversarial view (`align` in the batch) it also captures the neck features the alignment loss needs. Any other
    call (image tensors, validator batches) passes through.

    Examples:
        >>> guard = ViewGuard(model)
        >>> loss, items = model(make_view(batch, "adv", args, abar))  # through the auxiliary BNs
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
        view = args[0] if args and isinstance(args[0], dict) else {}
        if "view" not in view:
            return
        if self.stats is None:
            self.stats = {k: v.clone() for k, v in module.named_buffers() if "running_" in k or "num_batches" in k}
        self.routing = ExitStack()
        if view["aux_bn"]:
            self.routing.enter_context(aux_bn(module))
        if "align" in view:  # UDFA: the student's neck features, for ViewLoss to align with the teacher's
            view["align"] = {**view["align"], "student": self.routing.enter_context(captured(module, view["align"]["layers"]))}

    def exit(self, module: torch.nn.Module, args: tuple, output) -> None:
        """After a view's forward (also when it raised): restore the routing and keep the view's loss."""
        if self.routing is None:
            return
        self.routing.close()
        self.routing = None
        if isinstance(output, tuple):
            self.losses.append((args[0]["view"], output[0].detach().sum()))

    def pop_bad(self) -> dict:
        """Return the views with a non-finite loss since the last call, restoring BN statistics if any; one device sync."""
        values = torch.stack([loss.float() for _, loss in self.losses]).tolist() if self.losses else []
        bad = {name: v for (name, _), v in zip(self.losses, values) if not math.isfinite(v)}
        if bad:
            self.model.load_state_dict(self.stats, strict=False)
        self.losses, self.stats = [], None
        return bad
