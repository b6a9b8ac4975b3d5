"""The attack stage: a batch -> batch transform adding the adversarial and mediate views (paper eq. 4 and 5)."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable

import torch
from torch import nn
from ultralytics.utils.torch_utils import unwrap_model

from yolo_advamd.attacks.base import Attack, AttackResult
from yolo_advamd.attacks.fgsm import FGSM
from yolo_advamd.attacks.objectives import Objective, check_terms, objective_for
from yolo_advamd.attacks.settings import check_attack_labels, is_number
from yolo_advamd.attacks.strategies import attack_batch
from yolo_advamd.attacks.targets import attack_targets
from yolo_advamd.checkpoint import freeze_target
from yolo_advamd.nn.dual_bn import aux_bn
from yolo_advamd.vulnerability import Vulnerability

__all__ = ("DEFAULT_PHI", "AttackStage", "preprocess")
ATTACK_MODELS = ("target", "current")
DEFAULT_PHI = {"fgsm": 0.7, "deepfool": 0.6, "pgd": 0.5}  # the paper, section 5.3


def check_phi(phi) -> None:
    """Refuse a mediate coefficient outside (0, 1)."""
    if not is_number(phi) or not 0 < phi < 1:
        raise ValueError(f"phi={phi} is outside (0, 1): the mediate sample is x + phi * delta, e.g. phi=0.5")


class AttackStage:
    """Attack a batch and add its adversarial view `img_adv` and mediate view `img_med` (paper Algorithm 1, l. 2-6).

    For images x (`batch["img"]`, float in [0, 1]) and the attack's perturbation δ:
    `img_adv = clip(x + δ)` and `img_med = clip(x + φ δ)`. The attacked model is either `target`, a frozen copy of
    the starting weights in eval mode (M_T), or `current`, the model being trained, passed per call or held by
    reference. The stage is a plain object, not an `nn.Module`: the target copy never becomes a submodule of the
    trained model, so it stays out of its state dict, EMA, optimizer and checkpoints.

    One implementation serves both uses: call it on a batch already on the device (a trainer, right after
    `preprocess_batch`), or wrap a dataloader's collate function with `wrap_collate`.

    Targets: the attack pushes against the batch's ground truth (`attack_labels="gt"`, the paper's) or against the
    attacked model's own predictions on x (`"pred"`: detections above `attack_conf` after NMS, a classifier's top-1;
    see `attacks.targets`), which costs one no-grad forward and NMS per batch.

    Flip statistics: with `collect_stats=True` and a `vulnerability`, each call adds, for every ground-truth object,
    its true class, its benign class and its class after the attack (argmax of the per-object class logits) to the
    `Vulnerability`, whatever the attack's targets. The attack result's `clean_logits` / `adv_logits` are used when
    the attack computed them, on the ground truth, at no extra cost; a missing one costs one extra no-grad forward of
    the attacked model (on x or on `img_adv`).

    Attributes:
        attack (Attack): The attack (FGSM, PGD, DeepFool, ...) that returns δ.
        phi (float): Mediate coefficient φ in (0, 1).
        attack_model (str): "target" or "current".
        model (nn.Module | None): The model being trained, used in "current" mode when none is passed per call.
        target (nn.Module | None): The frozen target model in "target" mode.
        vulnerability (Vulnerability | None): Where flip statistics go.
        terms (str): The part of the detection loss attacked: "all" (box + cls + dfl), "cls", "box" (box + dfl) or
            "max" (a cls and a box attack, per image the stronger one; see `attack_batch`).
        collect_stats (bool): Whether calls feed `vulnerability` (switch on for calibration and Ā refresh only).
        attack_aux_bn (bool): Whether the current model is attacked through its auxiliary BNs (Det-AdvProp).
        attack_labels (str): "gt" or "pred", the attack's targets.
        attack_conf (float): Confidence above which a prediction is a target with `attack_labels="pred"`.

    Examples:
        >>> stage = AttackStage(build_attack("fgsm", eps=0.01), DEFAULT_PHI["fgsm"], "target", model=model)
        >>> batch = stage(batch)  # adds batch["img_adv"], batch["img_med"]
    """

    def __init__(
        self,
        attack: Attack,
        phi: float,
        attack_model: str = "target",
        model: nn.Module | None = None,
        target: nn.Module | None = None,
        vulnerability: Vulnerability | None = None,
        terms: str = "all",
        collect_stats: bool = False,
        attack_aux_bn: bool = False,
        attack_labels: str = "gt",
        attack_conf: float = 0.25,
    ):
        """Set up the stage; in "target" mode without `target`, freeze a copy of `model` now.

        Args:
            attack (Attack): The attack.
            phi (float): Mediate coefficient φ in (0, 1), e.g. `DEFAULT_PHI["pgd"]`.
            attack_model (str): "target" (attack the frozen M_T) or "current" (attack the model being trained).
            model (nn.Module | None): The model being trained: the source of the target copy in "target" mode, the
                default attacked model in "current" mode.
            target (nn.Module | None): A ready frozen target (e.g. restored on resume); made from `model` if omitted.
            vulnerability (Vulnerability | None): Receives flip statistics when `collect_stats` is on.
            terms (str): "all", "cls", "box" or "max", the part of the detection loss the attack maximizes.
            collect_stats (bool): Feed flip statistics to `vulnerability` on each call.
            attack_aux_bn (bool): Attack the current model through its auxiliary BNs (AdvProp's and Det-AdvProp's
                Algorithm 1: adversarial examples are made with the auxiliary BN, the one their loss trains).
            attack_labels (str): "gt" (the ground truth) or "pred" (the attacked model's predictions on clean images).
            attack_conf (float): Confidence in (0, 1) above which a prediction is a target with `attack_labels="pred"`.
        """
        if attack_model not in ATTACK_MODELS:
            raise ValueError(
                f"attack_model={attack_model!r} is not valid: choose 'target' (frozen copy of the starting model) "
                "or 'current' (the model being trained)"
            )
        check_phi(phi)
        check_terms(terms)
        attack_labels = check_attack_labels(attack_labels, attack_conf)
        if attack_model == "target" and target is None:
            if model is None:
                raise ValueError("attack_model='target' needs model= (to freeze a copy of) or target= (a frozen copy)")
            target = freeze_target(model)
        if attack_aux_bn and attack_model != "current":
            raise ValueError(
                "attack_aux_bn=True attacks the model being trained through its auxiliary BN: use "
                "attack_model='current'"
            )
        if collect_stats and vulnerability is None:
            raise ValueError("collect_stats=True needs vulnerability=Vulnerability(nc) to receive the flip statistics")
        self.attack = attack
        self.phi = float(phi)
        self.attack_model = attack_model
        self.model = model if attack_model == "current" else None
        self.target = target
        self.vulnerability = vulnerability
        self.terms = terms
        self.collect_stats = collect_stats
        self.attack_aux_bn = attack_aux_bn
        self.attack_labels = attack_labels
        self.attack_conf = float(attack_conf)

    def attacked(self, model: nn.Module | None = None) -> nn.Module:
        """Return the model to attack: the target copy, or the current model (`model`, else the held reference)."""
        if self.attack_model == "target":
            return self.target
        model = model if model is not None else self.model
        if model is None:
            raise ValueError(
                "attack_model='current' needs the model being trained: AttackStage(model=...) or stage(batch, model)"
            )
        return unwrap_model(model)

    @property
    def reuses_gradient(self) -> bool:
        """Whether a training pass's input gradient can stand in for the attack: FGSM on the current model's loss.

        The current model's training loss at the clean images, in train mode, is this stage's objective (Ultralytics
        assigns anchors from detached predictions, so its input gradient is the fixed-assignment one), and FGSM
        only needs its sign: pass that gradient as `stage(batch, grad=...)` and the attack costs nothing. Not with
        `attack_labels="pred"`: the training loss is on the ground truth, the attack on the predictions.
        """
        return (
            self.attack_model == "current"
            and self.attack_labels == "gt"
            and not self.attack_aux_bn
            and isinstance(self.attack, FGSM)
            and not self.attack.random_start
            and self.terms == "all"
        )

    def __call__(self, batch: dict, model: nn.Module | None = None, grad: torch.Tensor | None = None) -> dict:
        """Attack `batch` and return a new batch dict with `img_adv` and `img_med` added.

        Args:
            batch (dict): A preprocessed detection batch on the attacked model's device: `img` (B, 3, H, W) float in
                [0, 1], `cls`, `bboxes`, `batch_idx`. It is not modified.
            model (nn.Module | None): The model being trained ("current" mode); ignored in "target" mode.
            grad (torch.Tensor | None): The input gradient of the current model's training loss at `img`, when a
                training pass computed it already (only if `reuses_gradient`): no attack pass is run then.

        Returns:
            (dict): The same entries as `batch` plus `img_adv` and `img_med` (detached, dtype of `img`).
        """
        attacked = self.attacked(model)
        img = batch["img"].detach()
        if self.attack_model == "target" and next(attacked.parameters()).device != img.device:
            attacked.to(img.device)  # the frozen copy follows the data (e.g. wrap_collate to another device)
        if grad is not None and not self.reuses_gradient:
            raise ValueError(f"{self.attack} with attack_model={self.attack_model!r} cannot reuse a training gradient")
        out = dict(batch)
        with aux_bn(attacked) if self.attack_aux_bn else contextlib.nullcontext():  # flips counted through that BN too
            if grad is None:
                targets = attack_targets(attacked, batch, self.attack_labels, self.attack_conf)
                result, objective = attack_batch(self.attack, attacked, targets, self.terms)
            else:
                objective = objective_for(attacked, batch, self.terms)
                result = self.attack.step(img, grad.float())
            out["img_adv"] = result.adv.detach().to(img.dtype)  # clip(x + delta)
            out["img_med"] = (img + self.phi * result.delta.detach().to(img.dtype)).clamp_(*self.attack.clip)
            if self.collect_stats and self.attack_labels == "pred":  # flips count against the ground truth
                self.update_stats(objective_for(attacked, batch), img, out["img_adv"])
            elif self.collect_stats:
                self.update_stats(objective, img, out["img_adv"], result)
        return out

    @torch.no_grad()
    def update_stats(
        self, objective: Objective, img: torch.Tensor, adv: torch.Tensor, result: AttackResult | None = None
    ) -> None:
        """Add the batch's flips to `vulnerability`: the objects of `objective` (the ground truth), reusing the logits
        of the attack's `result` (made on that objective) and computing only missing ones."""
        if self.vulnerability is None:
            raise ValueError("collect_stats=True needs stage.vulnerability = Vulnerability(nc) for the statistics")
        clean_logits, adv_logits = (result.clean_logits, result.adv_logits) if result else (None, None)
        if clean_logits is None or adv_logits is None:
            with objective.frozen():
                clean_logits = objective.object_logits(img) if clean_logits is None else clean_logits
                adv_logits = objective.object_logits(adv) if adv_logits is None else adv_logits
        self.vulnerability.update(objective.labels, clean_logits, adv_logits)

    def wrap_collate(self, collate_fn: Callable[[list], dict], device: str | torch.device) -> Callable[[list], dict]:
        """Return a collate function: `collate_fn`, then Ultralytics-style preprocessing on `device`, then the stage.

        The preprocessing matches `DetectionTrainer.preprocess_batch` without multi-scale: every tensor moves to
        `device` and a uint8 `img` is scaled from 0-255 to float [0, 1] (a float `img` is taken as already scaled).
        Attacking on a GPU inside dataloader workers is not possible with forked processes: use `num_workers=0`
        then, or a CPU device.

        Args:
            collate_fn (Callable): The dataset's collate function, e.g. `YOLODataset.collate_fn`.
            device (str | torch.device): Where the batch is moved and attacked.

        Returns:
            (Callable): `collate(samples) -> batch` with `img_adv` and `img_med`.
        """
        return partial(self._collate, collate_fn, torch.device(device))

    def _collate(self, collate_fn: Callable[[list], dict], device: torch.device, samples: list) -> dict:
        """Collate, preprocess and attack one batch (see `wrap_collate`)."""
        return self(preprocess(collate_fn(samples), device))


def preprocess(batch: dict, device: torch.device) -> dict:
    """Move a batch's tensors to `device` and scale a uint8 `img` to float [0, 1], as Ultralytics' trainer does."""
    non_blocking = device.type not in {"cpu", "mps"}
    batch = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if batch["img"].dtype == torch.uint8:
        batch["img"] = batch["img"].float() / 255
    return batch
