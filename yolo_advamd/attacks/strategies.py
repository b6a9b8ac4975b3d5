"""How a batch is attacked for a setting of `attack_terms`: one attack on a part of the model's loss, or Det-AdvProp's
per-image choice between a classification and a localization attack (`max`).

Examples:
    >>> result, objective = attack_batch(build_attack("fgsm", eps=0.01), model, batch, terms="max")
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_advamd.attacks.base import AttackResult
from yolo_advamd.attacks.fgsm import FGSM
from yolo_advamd.attacks.objectives import check_terms, objective_for


def attack_batch(attack, model: nn.Module, batch: dict, terms: str = "all"):
    """Attack a batch on `terms` of the model's loss (see `objective_for`); return the attack's result and objective.

    `terms="max"` is Det-AdvProp's selection (`attack_max`).

    Args:
        attack (Attack): The attack (FGSM, PGD, DeepFool).
        model (nn.Module): The attacked model (see `objective_for`).
        batch (dict): A preprocessed batch: `img` in [0, 1] and its targets.
        terms (str): One of `ATTACK_TERMS`: "all", "cls", "box" or "max".

    Returns:
        result (AttackResult): The perturbation and adversarial images.
        objective (Objective): The objective attacked (for flip statistics).
    """
    from ultralytics.nn.tasks import ClassificationModel

    check_terms(terms, classifier=isinstance(model, ClassificationModel))
    if terms == "max":
        return attack_max(attack, model, batch)
    objective = objective_for(model, batch, terms)
    return attack(batch["img"].detach(), objective), objective


def attack_max(attack, model: nn.Module, batch: dict):
    """Attack a detector's batch the Det-AdvProp way (Chen et al., CVPR 2021, eq. 5); return the result and objective.

    One attack on the classification term and one on the localization terms (box + dfl), then, per image, the
    adversarial image whose detection loss (`DetectionObjective.image_losses`) is the larger; that costs the two attacks
    and one forward pass of each result (two FGSM steps share their forward pass at the clean images).
    The returned result then has no iterates and no adversarial logits, and its objective is the cls attack's
    (per-object logits do not depend on the terms).

    Args:
        attack (Attack): The attack (FGSM, PGD, DeepFool).
        model (nn.Module): The attacked detector or segmentation model.
        batch (dict): A preprocessed batch: `img` in [0, 1] and its targets.

    Returns:
        result (AttackResult): The perturbation and adversarial images.
        objective (Objective): The cls attack's objective (for flip statistics).
    """
    img = batch["img"].detach()
    objective = objective_for(model, batch, "cls")
    if isinstance(attack, FGSM) and not attack.random_start:  # both steps start at x: one forward, two backwards
        with torch.inference_mode(False), torch.enable_grad(), objective.frozen():
            x = img.clone().requires_grad_(True)
            parts, logits = objective.loss_parts(x)
            grads = [torch.autograd.grad(parts[t], x, retain_graph=t == "cls")[0] for t in ("cls", "box")]
        results = [attack.step(img, g, clean_logits=logits.detach()) for g in grads]
    else:
        results = [attack(img, objective), attack(img, objective_for(model, batch, "box"))]
    with objective.frozen():
        losses = torch.stack([objective.image_losses(r.adv) for r in results])
    keep_box = (losses[1] > losses[0]).view(-1, *[1] * (img.ndim - 1))
    adv = torch.where(keep_box, results[1].adv, results[0].adv)
    return AttackResult(delta=adv - img, adv=adv, clean_logits=results[0].clean_logits), objective
