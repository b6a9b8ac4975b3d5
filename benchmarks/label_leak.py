"""Do models read the labels off another model's perturbations? Score them on attacks made on `attack_model` (M_T)
with the true labels and with every object's class moved to the next one (k -> k + 1 mod nc).

An attack made with the ground-truth labels carries them (label leaking, Kurakin et al., ICLR 2017). A model trained
on a frozen M_T's perturbations may learn to decode them: it then scores above its benign mAP on the first and falls
on the second, where a model that is merely robust to them scores about the same on both.

Usage:
    python benchmarks/label_leak.py models=runs/a/weights/best.pt,runs/b/weights/best.pt \
        attack_model=docs/results/targets/full.pt data=data/digits-det.yaml imgsz=160 eps=0.01

Every `validate_advamd` setting passes through: with `attack_labels=pred` the attacks are made on M_T's own
predictions instead of the true labels (and shifted from those), a perturbation that carries no label to read.
"""

from __future__ import annotations

from contextlib import contextmanager

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd import validate, validators
from yolo_advamd.cfg import parse_cli

DEFAULTS = {
    "attack_model": "docs/results/targets/full.pt",
    "data": "data/digits-det.yaml",
    "imgsz": 160,
    "eps": 0.01,
    "attacks": "fgsm,pgd",
    "steps": 3,
}


class ShiftedLabelValidator(validators.AdvDetectionValidator):
    """Attack with every target's class replaced by the next one; validate against the true labels."""

    def attack_targets_of(self, batch: dict) -> dict:
        """Return the attack's targets (the true labels, or with `attack_labels=pred` the attacked model's
        predictions), each object moved to the next class."""
        targets = super().attack_targets_of(batch)
        return {**targets, "cls": (targets["cls"] + 1) % len(self.data["names"])}


@contextmanager
def shifted_labels():
    """Validate detectors with ShiftedLabelValidator while in the block."""
    registry = validate.VALIDATORS
    validate.VALIDATORS = {**registry, "detect": ShiftedLabelValidator}
    try:
        yield
    finally:
        validate.VALIDATORS = registry


def scores(models: list[str], **kwargs) -> dict[str, dict[str, float]]:
    """mAP50-95 (%) of each model, benign and per attack column."""
    out = {}
    for m in models:
        res = validate.validate_advamd(m, name="label-leak", exist_ok=True, plots=False, **kwargs)
        out[m] = {col: 100 * s["metrics/mAP50-95(B)"] for col, s in res["rows"][0]["stats"].items()}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Validate every model twice and print one line per model and attack."""
    args = {**DEFAULTS, **parse_cli(argv)}
    models = str(args.pop("models")).split(",")
    true = scores(models, **args)
    with shifted_labels():
        shifted = scores(models, **args)
    print(f"\nmAP50-95 on attacks made on {args['attack_model']} at eps={args['eps']}: true labels -> shifted labels")
    for m in models:
        cols = [c for c in true[m] if c != validate.BENIGN]
        print(
            f"{m}: benign {true[m][validate.BENIGN]:.2f}; "
            + "; ".join(f"{c} {true[m][c]:.2f} -> {shifted[m][c]:.2f}" for c in cols)
        )
    return {"true": true, "shifted": shifted}


if __name__ == "__main__":
    main()
