"""FGSM: one signed-gradient step of size eps (Goodfellow et al., 2014)."""

from __future__ import annotations

import torch

from yolo_advamd.attacks.base import Attack, AttackResult
from yolo_advamd.attacks.settings import check_step_size, check_steps, parse_eps


class FGSM(Attack):
    """Fast Gradient Sign Method: `x_adv = clip(x + eps * sign(grad_x L(x)))` (L2: `eps * g / ||g||`).

    One forward and one input-only backward pass for the whole batch. With `random_start` (R+FGSM style) the step is
    taken from a random point of the eps ball and projected back. The clean forward pass also gives
    `clean_logits` when there is no random start.

    Examples:
        >>> result = FGSM(eps=0.01)(batch["img"], DetectionObjective(model, batch))
        >>> result.adv  # clip(x + delta), ||delta||_inf <= 0.01
    """

    def __init__(self, eps: float, norm: str | int = "inf", steps: int = 1, step_size: float | None = None, **kwargs):
        """Check the settings: FGSM is a single step of size eps (see `Attack` for the arguments)."""
        if check_steps(steps) != 1:
            raise ValueError(
                f"steps={steps} does not fit attack=fgsm (a single step): use steps=1, or attack=pgd for more"
            )
        if check_step_size(step_size) is not None and step_size != parse_eps(eps):
            raise ValueError(f"step_size={step_size}: FGSM steps by eps={eps}, leave step_size=None or use attack=pgd")
        super().__init__(eps, norm, steps=1, **kwargs)

    def forward(self, images: torch.Tensor, objective) -> AttackResult:
        """Take one ascent step of size eps from the start and project it onto the eps ball."""
        x = self.start(images)
        grad, logits = self.gradient(objective, x)
        return self.step(images, grad, x, clean_logits=None if self.random_start else logits)

    def step(
        self, images: torch.Tensor, grad: torch.Tensor, start: torch.Tensor | None = None, **kwargs
    ) -> AttackResult:
        """Return the FGSM result for the input gradient `grad` taken at `start` (default: `images`).

        A training pass that already computed the loss's input gradient at the clean images (e.g. the benign view with
        `attack_model=current`) gives FGSM for free this way. A NaN gradient entry gives no step there.
        """
        x = images if start is None else start
        return self.result(images, self.project(images, x + self.ascent(grad.nan_to_num(nan=0.0), self.eps)), **kwargs)
