"""UDFA (Xu et al., "Robust and Accurate Object Detection via Self-Knowledge Distillation", ICIP 2022)."""

from __future__ import annotations

import torch

from yolo_advamd.align import teacher_targets
from yolo_advamd.methods.base import Method
from yolo_advamd.views import View


class UDFA(Method):
    """UDFA: the benign detection loss, and the student's neck features on its adversarial images (current model)
    aligned with the frozen starting checkpoint's features on the clean images (see `yolo_advamd.align`).

    The code's VOC setting is taken (grispeut/udfa): no auxiliary BN, one FGSM step of 2/255 from the clean pass's
    gradient, alignment weights 1 (foreground) and 6 (background); its adversarial detection term and self-alignment
    terms are left out (the issue's loss: clean detection loss + alignment).
    """

    name = "udfa"
    about = (
        "benign detection loss + the adversarial neck features (current model) aligned with the frozen starting "
        "checkpoint's on the clean images; Xu et al., ICIP 2022; hyps/udfa.yaml (model= must be a .pt)"
    )
    defaults = {"attack": "fgsm", "eps": 2 / 255, "aux_bn": False}
    fixed = {"attack_model": "current", "mediate": False, "advamd_loss": False}
    tasks = ("detect", "segment")
    needs_teacher = True
    start_role = "aligns the model with a teacher"

    @classmethod
    def routes_views(cls, cfg: dict) -> bool:
        """UDFA's adversarial view captures the neck features, which a compiled loop cannot."""
        return True

    def column(self, name: str) -> str:
        """The adversarial view's loss is the alignment: `align_loss`."""
        return "align_loss" if name == "adv" else super().column(name)

    def prepare(self, batch: dict) -> None:
        """Run the teacher on the clean images: the features the adversarial view aligns with."""
        self.targets = teacher_targets(self.teacher, batch)

    def view(self, name: str, abar: torch.Tensor | None) -> View:
        """The adversarial view carries the teacher's features (`ViewLoss` scores it by their alignment)."""
        view = super().view(name, abar)
        if name == "adv":
            view.align = self.targets
        return view
