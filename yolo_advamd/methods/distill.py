"""Defensive distillation (Papernot et al., S&P 2016; Papernot and McDaniel, "Extending Defensive Distillation",
2017)."""

from __future__ import annotations

import torch

from yolo_advamd.distill import scale_class_logits, teacher_logits
from yolo_advamd.methods.base import Method
from yolo_advamd.views import View

ATTACK_KEYS = ("attack", "eps", "norm", "steps", "step_size", "random_start", "deepfool")


class Distill(Method):
    """Defensive distillation: the student (the model being trained, started from the teacher) learns the frozen
    starting checkpoint's class scores softened at a temperature T; box, DFL and mask terms train on the ground truth
    as stock (`yolo_advamd.distill`). No attack, one view: the benign images.

    What we took, and why:
        - T = 100 (`temperature`): Papernot et al. 2016 distill their MNIST and CIFAR10 networks at T = 100, the
          temperature of their strongest result, and so does Carlini and Wagner's reproduction
          (carlini/nn_robust_attacks, `train_models.py: train_distillation`, `train_temp=100`).
        - Soft targets only by default (`distill_hard=0`): Papernot et al. and that code train the student on the
          teacher's soft labels alone. Hinton et al. (2015) mix in the ground truth at a small weight, the second
          setting for that (`distill_hard` weights the ground-truth class term, 1 - it the soft term).
        - The soft term times T² (Hinton et al.): its gradients shrink as 1 / T², which would leave the class term
          negligible beside the box and DFL terms at T = 100; at T = 1 it is plain BCE (or cross-entropy).
        - Per anchor and class, BCE of sigmoid(z_S / T) against sigmoid(z_T) over every anchor for a detector's or
          segmenter's sigmoid scores, softmax with cross-entropy for a classifier: each task's own score function.
        - The teacher is the frozen starting checkpoint run in eval mode, the deployed model as it was; the student
          starts from it with the same architecture. Papernot et al. train the teacher at T and take its soft labels
          at T; ours was trained at T = 1, so its soft labels are its scores at 1 (`yolo_advamd.distill`): the
          student at T learns them with logits T times the teacher's, and at T = 1 its scores saturate, as theirs
          do. (The teacher read at T would give targets near 1/2 and keep the student's logits at its own: no
          defense.) The student starts there (`start`): a fine-tune does not grow logits 100-fold.
        - The deployed model runs at T = 1: nothing of T is in the checkpoint, which exports as a stock model.
    Distillation masks gradients rather than removing them (Carlini and Wagner, 2016): white-box attacks on the
    deployed model at T = 1 are the honest measure, and PGD starts from a random point of the ε ball.
    """

    name = "distill"
    about = (
        "defensive distillation: the class scores softened at temperature T learn the frozen starting checkpoint's, "
        "no attack; Papernot et al., S&P 2016; hyps/distill.yaml (model= must be a .pt)"
    )
    fixed = {"mediate": False, "aux_bn": False, "advamd_loss": False}
    attacks = False
    needs_teacher = True
    start_role = "learns the class scores of a teacher"

    @classmethod
    def check_start(cls, overrides: dict) -> None:
        """Refuse a run without a teacher (`Method.check_start`), and attack settings, which distillation has no use
        for."""
        super().check_start(overrides)
        if given := [k for k in ATTACK_KEYS if overrides.get(k) is not None]:
            raise ValueError(
                f"{given[0]}={overrides[given[0]]} has no effect with method=distill, which trains without an attack: "
                f"drop {given[0]}= (attacks are for validation: val_advamd.py attacks=fgsm,pgd)"
            )

    def start(self, models: list) -> None:
        """Start the student at the soft term's optimum: its class logits T times the teacher's."""
        for model in models:
            scale_class_logits(model, self.args.temperature)

    def views(self, reuse_gradient: bool) -> tuple[str, ...]:
        """One view, the benign images, trained by the loop's own pass."""
        return ("benign",)

    def columns(self) -> tuple[str, ...]:
        """The soft class term's column, `soft_loss` (the task's class column keeps the ground-truth term)."""
        return ("soft_loss",)

    def prepare(self, batch: dict) -> None:
        """Run the teacher on the images: the soft targets of the student's class scores."""
        self.targets = teacher_logits(self.teacher, batch)

    def view(self, name: str, abar: torch.Tensor | None) -> View:
        """The benign view carries the teacher's logits and the temperature (`ViewLoss` trains on them)."""
        view = super().view(name, abar)
        view.distill = {"teacher": self.targets, "temperature": self.args.temperature, "hard": self.args.distill_hard}
        return view
