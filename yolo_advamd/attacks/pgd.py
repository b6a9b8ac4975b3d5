"""PGD: projected gradient ascent on the loss inside the eps ball (Madry et al., 2018)."""

from __future__ import annotations

import torch

from yolo_advamd.attacks.base import Attack, AttackResult


class PGD(Attack):
    """Projected Gradient Descent: `x_{t+1} = Proj_{B(x, eps)}(x_t + a * sign(grad L(x_t)))` (L2: `a * g / ||g||`).

    Starts at x, or at a random point of the eps ball with `random_start` (Madry et al.), and takes `steps` steps of
    size `step_size` (default `2.5 * eps / steps`), each one batched forward and input-only backward pass.
    `iterates` holds each step's images when `return_iterates=True`.

    Examples:
        >>> result = PGD(eps=0.01, steps=10, random_start=True, seed=0)(batch["img"], objective)
    """

    def forward(self, images: torch.Tensor, objective) -> AttackResult:
        """Run `steps` projected ascent steps from the start."""
        size = self.step_size or 2.5 * self.eps / self.steps
        adv, iterates, clean_logits = self.start(images), [], None
        for t in range(self.steps):
            grad, logits = self.gradient(objective, adv)
            if t == 0 and not self.random_start:
                clean_logits = logits
            adv = self.project(images, adv + self.ascent(grad, size))
            iterates.append(adv)
        return self.result(images, adv, iterates=iterates if self.return_iterates else None, clean_logits=clean_logits)
