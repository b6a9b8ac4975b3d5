"""MagNet's denoising autoencoder (Meng and Chen, CCS 2017; Trevillie/MagNet `defensive_models.py`).

The reference's autoencoder I: 3x3 convolutions of 3 channels with sigmoid activations, a 2x2 average pooling and its
upsampling in between, and a sigmoid 3x3 convolution back to the image's channels; trained with the mean squared error
between its reconstruction of a noisy image (Gaussian noise of standard deviation `noise`, clipped to [0, 1]) and the
clean image. It plugs into Ultralytics' trainer as a model: `model(batch)` returns its loss and loss items, and
`model(images)` its reconstruction, as a YOLO model does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 3  # channels of the hidden convolutions: the reference's MNIST_I, structure [3, "average", 3]


class Autoencoder(nn.Module):
    """A denoising autoencoder for images in [0, 1], with what MagNet needs to use it as a defense.

    Attributes:
        noise (float): Standard deviation of the Gaussian noise added to the training inputs (reference v_noise).
        p (int): Exponent of the reconstruction error, mean |x - AE(x)|^p per image (the reference's detector I: 2).
        threshold (float | None): Errors above it are rejected; set on benign val (`magnet.fit_threshold`).
        fpr (float | None): The false-rejection rate the threshold was set for (`magnet_fpr`).
        fit_for (str | None): The checkpoint of the model it defends.
        imgsz (int | None): The image size it was trained and calibrated at.
        task (str): The task of that model (the dataset it was trained on).
    """

    def __init__(self, channels: int = 3, noise: float = 0.1, p: int = 2, task: str = "detect"):
        """Build the encoder and decoder for images of `channels` channels."""
        super().__init__()
        self.noise, self.p, self.task = noise, p, task
        self.threshold = self.fpr = self.fit_for = self.imgsz = None
        self.stride = torch.tensor([32.0])  # Ultralytics' loaders pad images to multiples of this
        self.criterion = None  # Ultralytics' loop asks a model for its criterion; the loss is `loss`
        self.model = nn.Sequential(  # its layers, under the name Ultralytics' models keep theirs
            nn.Conv2d(channels, WIDTH, 3, padding=1),
            nn.Sigmoid(),
            nn.AvgPool2d(2),
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.Sigmoid(),
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.Sigmoid(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.Sigmoid(),
            nn.Conv2d(WIDTH, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor | dict, *args, **kwargs) -> torch.Tensor | tuple:
        """Return the reconstruction of images `x` (B, C, H, W) in [0, 1], H and W even, or the training loss of a
        batch dict."""
        return self.loss(x) if isinstance(x, dict) else self.model(x)

    def loss(self, batch: dict, preds: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Return the mean squared reconstruction error times the batch size, and its value as the item `recon_loss`.

        Without `preds` (training) the input is the batch's images plus Gaussian noise, clipped to [0, 1]; with them
        (Ultralytics' validator) `preds` are the reconstructions of the clean images.
        """
        clean = batch["img"]
        if preds is None:
            preds = self((clean + self.noise * torch.randn_like(clean)).clamp(0, 1))
        mse = F.mse_loss(preds.float(), clean.float())
        return mse * len(clean), {"recon_loss": mse.detach()}

    def screen(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the reconstruction of images `x` (the reformer's output) and each image's error, mean |x - AE(x)|^p
        (B,) (the detector's score), from one forward pass."""
        reconstruction = self(x)
        return reconstruction, reconstruction_error(x, reconstruction, self.p)

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction error of each image, mean |x - AE(x)|^p (B,): the detector's score."""
        return self.screen(x)[1]


def reconstruction_error(x: torch.Tensor, reconstruction: torch.Tensor, p: int) -> torch.Tensor:
    """Return mean |x - reconstruction|^p per image (B,) (the reference's `AEDetector.mark`)."""
    return (x.float() - reconstruction.float()).abs().pow(p).flatten(1).mean(1)


torch.serialization.add_safe_globals([Autoencoder])  # MagNet checkpoints load under ULTRALYTICS_SAFE_LOAD=1
