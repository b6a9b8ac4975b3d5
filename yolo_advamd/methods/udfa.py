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

    Attributes:
        teacher (torch.nn.Module | None): The teacher, set by the trainer once it has frozen the starting weights.
        targets (dict | None): The teacher's features on the current batch (`prepare`).
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

    def __init__(self, args):
        """Bind the method to a run's settings; the teacher comes at setup (`teacher`)."""
        super().__init__(args)
        self.teacher = self.targets = None

    @classmethod
    def check_start(cls, overrides: dict) -> None:
        """Refuse a run without a teacher: `model=` is not a checkpoint (and the run is not resumed)."""
        if not str(overrides.get("model", "")).endswith(".pt") and not overrides.get("resume"):
            raise ValueError(
                "method=udfa aligns the model with a teacher, the starting checkpoint, and "
                f"model={overrides.get('model')} "
                "has none: pass a trained checkpoint, e.g. model=runs/detect/train/weights/best.pt"
            )

    @classmethod
    def routes_views(cls, cfg: dict) -> bool:
        """UDFA's adversarial view captures the neck features, which a compiled loop cannot."""
        return True

    def setup(self, target) -> None:
        """The frozen starting weights are the teacher."""
        self.teacher = target

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
