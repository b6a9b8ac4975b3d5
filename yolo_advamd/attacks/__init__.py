"""Adversarial attacks on detectors and classifiers: FGSM, PGD and DeepFool, each maximizing an objective.

Examples:
    >>> from yolo_advamd.attacks import build_attack
    >>> from yolo_advamd.attacks.objectives import DetectionObjective
    >>> attack = build_attack("pgd", eps=0.01, steps=10, random_start=True, seed=0)
    >>> result = attack(batch["img"], DetectionObjective(model, batch))
"""

from __future__ import annotations

from yolo_advamd.attacks.base import Attack, AttackResult
from yolo_advamd.attacks.deepfool import DeepFool
from yolo_advamd.attacks.fgsm import FGSM
from yolo_advamd.attacks.objectives import ClassifierObjective, DetectionObjective
from yolo_advamd.attacks.pgd import PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "deepfool": DeepFool}

__all__ = (
    "ATTACKS",
    "Attack",
    "AttackResult",
    "ClassifierObjective",
    "DeepFool",
    "DetectionObjective",
    "FGSM",
    "PGD",
    "build_attack",
)


def build_attack(name: str, deepfool: str | None = None, **kwargs) -> Attack:
    """Build an attack by name.

    Args:
        name (str): "fgsm", "pgd" or "deepfool" (any case).
        deepfool (str | None): DeepFool's variant, "fast" or "exact" (the `deepfool=` setting); None for its default.
            Refused with another attack.
        **kwargs (Any): The attack's settings: eps, norm, steps, step_size, random_start, seed, clip,
            return_iterates; DeepFool also overshoot and candidates.

    Returns:
        (Attack): The attack.
    """
    cls = ATTACKS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"attack={name!r} is not valid: choose one of {', '.join(ATTACKS)}")
    if deepfool is not None:
        if cls is not DeepFool:
            raise ValueError(f"deepfool={deepfool} chooses DeepFool's variant: attack={name} has none, drop deepfool=")
        kwargs["variant"] = deepfool
    return cls(**kwargs)
