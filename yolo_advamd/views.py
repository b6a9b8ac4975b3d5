"""A view: one image set of an adversarial training step and how it is trained (paper Algorithm 1, eq. 7).

A view batch is a training batch whose `img` holds the view's images (the clean ones stay as `img_benign`) and whose
`view` entry is a `View`: the only key that the methods write (`methods.Method.view_batch`), `step.ViewGuard` routes by
and `loss.ViewLoss` weights by. Batches without it (validation, plain calls) are trained as Ultralytics trains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGES = {"benign": "img", "med": "img_med", "adv": "img_adv"}  # view name -> the batch key of its images


@dataclass
class View:
    """How one view of a batch is trained.

    Attributes:
        name (str): "benign", "med" (mediate, x + φδ) or "adv" (adversarial, x + δ).
        column (str): Its loss column in results.csv when it is not the benign view ("med_loss", "adv_loss",
            UDFA's "align_loss"); the benign view logs the task's own columns.
        loss_scale (float): Its β.
        aux_bn (bool): Whether it runs through the auxiliary BNs.
        class_weights (torch.Tensor | None): Per-class weights Ā (nc,) of its classification loss.
        abar_scope (str): Where Ā weights: "positive" (assigned classes) or "all" (every BCE element).
        align (dict | None): UDFA's teacher features to align with (`align.teacher_targets`); the student's are added
            during the forward pass (`step.ViewGuard`).
        distill (dict | None): Defensive distillation's soft targets: the teacher's class logits (`teacher`, one per
            head branch, `distill.teacher_logits`), the `temperature` and the `hard` weight of the ground-truth term.
        logged (dict | None): The other views' loss items, on the view the training loop runs itself.
    """

    name: str
    column: str
    loss_scale: float
    aux_bn: bool = False
    class_weights: torch.Tensor | None = None
    abar_scope: str = "positive"
    align: dict | None = None
    distill: dict | None = None
    logged: dict | None = None
