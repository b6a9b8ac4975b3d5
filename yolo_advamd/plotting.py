"""Pictures: AdvAmd training's benign, mediate and adversarial views beside the amplified perturbation, and the
validation score per corruption × severity."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from ultralytics.utils.plotting import plot_images


def tensorboard_writer():
    """Return Ultralytics' TensorBoard `SummaryWriter` when its integration is on (`yolo settings tensorboard=True`)."""
    from ultralytics.utils.callbacks import tensorboard

    return getattr(tensorboard, "WRITER", None)


def plot_views(batch: dict, fname, on_plot=None, max_images: int = 4):
    """Plot a grid like Ultralytics' `train_batch*.jpg`: one column per image, rows benign, mediate, adversarial, δ.

    The perturbation δ = adversarial - benign is amplified to the full grey range per image (mid-grey is 0).

    Args:
        batch (dict): A preprocessed batch with `img`, `img_med`, `img_adv` (B, 3, H, W) in [0, 1] and its labels
            (boxes, or one class per image for a classifier).
        fname (str | Path): Output JPG path.
        on_plot (callable, optional): Ultralytics' plot callback.
        max_images (int): Number of images (columns) to show.

    Returns:
        (np.ndarray): The grid as an RGB image (H, W, 3), also saved to `fname`.
    """
    n = min(max_images, len(batch["img"]))
    img, med, adv = (batch[k][:n].detach().float().cpu() for k in ("img", "img_med", "img_adv"))
    delta = adv - img
    scale = delta.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    images = torch.stack([img, med, adv, 0.5 + delta / (2 * scale)], 1).flatten(0, 1)  # (n*4, 3, H, W)
    if "bboxes" in batch:  # detection and segmentation: the boxes
        idx = batch["batch_idx"].cpu()
        keep = idx < n
        cls, idx = batch["cls"].cpu()[keep].view(-1), idx[keep].long()
        labels = {"bboxes": batch["bboxes"].cpu()[keep].repeat(3, 1)}
    else:  # classification: each image's class
        cls, idx, labels = batch["cls"][:n].cpu().view(-1), torch.arange(n), {}
    labels.update(
        img=images,
        cls=cls.repeat(3),
        batch_idx=torch.cat([idx * 4 + v for v in range(3)]).float(),  # labels on the three image views only
    )
    grid = plot_images(labels=labels, max_subplots=4 * n, save=False, threaded=False)
    cv2.imwrite(str(fname), grid[..., ::-1])  # plot_images returns RGB
    if on_plot:
        on_plot(fname)
    return grid


def plot_corruptions(grids: dict, names: list[str], severities: list[int], metric: str, fname) -> None:
    """Draw scores per corruption × severity as heatmaps side by side, one per model (and Δ), values in %.

    Args:
        grids (dict[str, np.ndarray]): Title -> (corruption, severity) array of fractions; a title starting with Δ is
            drawn on a diverging scale centred on 0.
        names (list[str]): The corruptions, top to bottom.
        severities (list[int]): The severities, left to right.
        metric (str): The score's name, for the colour bar.
        fname (str | Path): Output PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(grids),
        figsize=(1.2 + 0.9 * len(severities) * len(grids) + 2.2 * len(grids), 1.2 + 0.35 * len(names)),
        squeeze=False,
    )
    for ax, (title, values) in zip(axes[0], grids.items()):
        values = 100 * values
        delta = title.startswith("Δ")
        limit = max(abs(values).max(), 1e-9) if delta else None
        image = ax.imshow(
            values,
            cmap="RdBu" if delta else "viridis",
            aspect="auto",
            vmin=-limit if delta else 0,
            vmax=limit if delta else max(values.max(), 1e-9),
        )
        for (i, j), v in np.ndenumerate(values):
            shade = image.norm(v)  # dark cells: viridis' low end, RdBu's two ends
            dark = abs(shade - 0.5) > 0.3 if delta else shade < 0.6
            ax.text(
                j,
                i,
                f"{v:{'+' if delta else ''}.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
        ax.set_xticks(range(len(severities)), [f"s{s}" for s in severities])
        ax.set_yticks(range(len(names)), names)
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, label=metric, fraction=0.05)
    fig.tight_layout()
    fig.savefig(fname, dpi=120)
    plt.close(fig)
