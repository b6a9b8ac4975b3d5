"""The `Attack` base: budget, norm, steps, random start, projection, and a side-effect-free run on an objective."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yolo_advamd.attacks.settings import (
    check_eps,
    check_norm,
    check_step_size,
    check_steps,
)


@dataclass
class AttackResult:
    """What an attack returns for a batch of images x.

    Attributes:
        delta (torch.Tensor): (B, 3, H, W) perturbation `adv - x`: within the eps ball of the attack's norm (up to
            float32 rounding) and with `x + delta` inside the clip range.
        adv (torch.Tensor): (B, 3, H, W) adversarial images `clip(x + delta)`, detached.
        iterates (list[torch.Tensor] | None): Each step's adversarial images (PGD, DeepFool) when
            `return_iterates=True`, else None.
        clean_logits (torch.Tensor | None): (n_obj, nc) per-object class logits at x when the attack evaluated x
            anyway (FGSM, PGD without random start, DeepFool), else None.
        adv_logits (torch.Tensor | None): (n_obj, nc) per-object class logits at `adv` when the attack evaluated
            `adv` anyway (DeepFool), else None.
    """

    delta: torch.Tensor
    adv: torch.Tensor
    iterates: list[torch.Tensor] | None = None
    clean_logits: torch.Tensor | None = None
    adv_logits: torch.Tensor | None = None


class Attack:
    """Base of gradient attacks on an objective: checks settings, owns the eps ball, runs without side effects.

    A subclass implements `forward(images, objective) -> AttackResult` with the helpers `start`, `gradient`,
    `ascent` and `project`. Calling an attack runs `forward` inside `objective.frozen()` with gradients enabled (also
    under `torch.no_grad()` or `torch.inference_mode()`, e.g. in a validator), so the attacked model's parameters,
    buffers, modes, `requires_grad` flags and `.grad` are exactly as before, and only input gradients are computed.
    Each step is one batched forward and backward pass; autocast, if active, applies to the model's forward.

    Attributes:
        eps (float): Budget on images scaled to [0, 1]: max |delta| per pixel (inf) or max L2 norm per image (2).
        norm (str | int): "inf" or 2.
        steps (int): Number of steps.
        step_size (float | None): Step size; None for the attack's default.
        random_start (bool): Start from a random point of the eps ball.
        seed (int | None): Seed of the random start; None uses torch's global generator.
        clip (tuple[float, float]): Valid image range.
        return_iterates (bool): Keep each step's adversarial images.
    """

    def __init__(
        self,
        eps: float,
        norm: str | int = "inf",
        steps: int = 1,
        step_size: float | None = None,
        random_start: bool = False,
        seed: int | None = None,
        clip: tuple[float, float] = (0.0, 1.0),
        return_iterates: bool = False,
    ):
        """Check and store the settings.

        Args:
            eps (float | str): Budget > 0 on images scaled to [0, 1] (the paper: 0.01, 0.1), a number or a fraction
                string such as "8/255"; at most the clip range for inf.
            norm (str | int): "inf" (the paper's choice) or 2; "linf", "l2", "2" and math.inf are accepted too.
            steps (int): Number of steps >= 1.
            step_size (float | None): Step size > 0, or None for the attack's default.
            random_start (bool): Start from a uniformly random point of the eps ball.
            seed (int | None): Seed of the random start, for reproducible attacks.
            clip (tuple[float, float]): Valid image range (lo, hi).
            return_iterates (bool): Return each step's adversarial images.
        """
        self.norm = check_norm(norm)
        lo, hi = (float(c) for c in clip)
        if not lo < hi:
            raise ValueError(f"clip={clip} is not a range: give (lo, hi) with lo < hi, e.g. clip=(0.0, 1.0)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed} must be a whole number or None")
        self.eps = check_eps(eps, self.norm, (lo, hi))  # an L-inf budget beyond the range means no budget
        self.steps = check_steps(steps)
        self.step_size = check_step_size(step_size)
        self.random_start = bool(random_start)
        self.seed = seed
        self.clip = (lo, hi)
        self.return_iterates = return_iterates
        self._generators = {}  # per device, seeded once: a fixed seed gives a reproducible sequence of starts

    def reset(self) -> None:
        """Restart the random starts: the next run draws the same sequence as a freshly built attack."""
        self._generators = {}

    def __repr__(self) -> str:
        """Return the attack's name and settings."""
        keys = ("eps", "norm", "steps", "step_size", "random_start", "seed")
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    def __call__(self, images: torch.Tensor, objective) -> AttackResult:
        """Attack `images` to maximize `objective`, leaving the attacked model exactly as it was.

        Args:
            images (torch.Tensor): (B, C, H, W) float images within `clip`, on the model's device.
            objective (DetectionObjective | ClassifierObjective): The batch's objective.

        Returns:
            (AttackResult): The perturbation, the adversarial images and what the attack saw on the way.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float (B, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        lo, hi = self.clip
        if images.numel() and (images.min() < lo or images.max() > hi):
            raise ValueError(
                f"images span [{images.min():.3g}, {images.max():.3g}], outside clip={self.clip}: "
                "scale uint8 images to [0, 1] first (img.float() / 255)"
            )
        with torch.inference_mode(False), torch.enable_grad(), objective.frozen():
            return self.forward(images.detach().clone(), objective)

    def forward(self, images: torch.Tensor, objective) -> AttackResult:
        """Compute the attack (implemented by each subclass)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images, objective)")

    def start(self, images: torch.Tensor) -> torch.Tensor:
        """Return the starting point: `images`, or a random point of the eps ball around them with `random_start`."""
        if not self.random_start:
            return images.clone()
        g = self._generators.get(images.device)
        if g is None and self.seed is not None:
            g = self._generators[images.device] = torch.Generator(images.device).manual_seed(self.seed)
        if self.norm == "inf":
            delta = torch.empty_like(images).uniform_(-self.eps, self.eps, generator=g)
        else:  # a random direction at a uniform radius in [0, eps], as torchattacks' PGDL2
            delta = torch.empty_like(images).normal_(generator=g)
            radius = torch.empty(len(images), 1, 1, 1, device=images.device, dtype=images.dtype).uniform_(generator=g)
            delta *= radius * self.eps / self.norms(delta).clamp(min=1e-12)
        return self.project(images, images + delta)

    @staticmethod
    def gradient(objective, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the input gradient of `objective.loss` at `adv` and the per-object logits of the same forward pass."""
        adv = adv.detach().requires_grad_(True)
        loss, logits = objective.loss_and_logits(adv)
        return torch.autograd.grad(loss, adv)[0], logits.detach()

    def ascent(self, grad: torch.Tensor, size: float) -> torch.Tensor:
        """Return the steepest-ascent step of `size` in the attack's norm: `size * sign(g)` or `size * g / ||g||_2`."""
        if self.norm == "inf":
            return size * grad.sign()
        return size * grad / (self.norms(grad) + 1e-10)

    def project(self, images: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """Return `adv` projected onto the eps ball around `images`, then clipped to the valid range (detached)."""
        delta = adv.detach() - images
        if self.norm == "inf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / self.norms(delta).clamp(min=1e-12)).clamp(max=1.0)
        return (images + delta).clamp(*self.clip)

    @staticmethod
    def norms(x: torch.Tensor) -> torch.Tensor:
        """Return the L2 norm of each sample of `x` (B, ...), shaped (B, 1, 1, 1) for broadcasting."""
        return x.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))

    @staticmethod
    def result(images: torch.Tensor, adv: torch.Tensor, **kwargs) -> AttackResult:
        """Pack `adv` (and the optional iterates and logits) into an `AttackResult` with `delta = adv - images`."""
        adv = adv.detach()
        return AttackResult(delta=adv - images, adv=adv, **kwargs)
