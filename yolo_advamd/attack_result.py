"""The outcome of attacking one image (`AdversarialResult`): original and adversarial pixels, δ, the model's
predictions before and after, a side-by-side picture and CSV files.

Examples:
    >>> result = attack("best.pt", source="image.jpg")[0]
    >>> result.summary()  # detections before and after, mean confidence drop, L-inf and L2 of δ
    >>> result.save("runs/attack/exp")  # image.png, image_compare.jpg, image.csv
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

CSV_COLUMNS = (
    "image",
    "stage",
    "class",
    "name",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
    "detections_before",
    "detections_after",
    "mean_conf_drop",
    "linf",
    "l2",
)


@dataclass
class AdversarialResult:
    """One attacked image: the original and adversarial pixels, δ, and the model's `Results` before and after.

    Attributes:
        path (str): The source image's path (`imageN.jpg` for arrays and tensors, as Ultralytics names them).
        orig_img (np.ndarray): (H, W, 3) uint8 BGR original image, like `Results.orig_img`.
        adv_img (np.ndarray): (H, W, 3) uint8 BGR adversarial image at the original size.
        delta (np.ndarray): (H, W, 3) int16 BGR `adv_img - orig_img` in 0-255 units: exactly what a saved PNG adds.
        before (Results): `predict()` on the original image.
        after (Results): `predict()` on the adversarial image.
        targets (dict): What the attack pushed against: `source` ("labels", "predictions" or "none" for vanish),
            `cls` (n,) and `xyxy` (n, 4) in original-image pixels.
        method (str): The attack, e.g. "pgd".
        eps (float): Its budget on images scaled to [0, 1].
        objective (str): "loss", "cls" or "vanish".
        files (dict): Paths written by `save` (`adversarial`, `compare`, `csv`).
    """

    path: str
    orig_img: np.ndarray
    adv_img: np.ndarray
    delta: np.ndarray
    before: object
    after: object
    targets: dict
    method: str
    eps: float
    objective: str
    files: dict = field(default_factory=dict)

    @property
    def linf(self) -> float:
        """Return ‖δ‖∞ on images scaled to [0, 1] (the unit of eps)."""
        return float(np.abs(self.delta).max()) / 255 if self.delta.size else 0.0

    @property
    def l2(self) -> float:
        """Return ‖δ‖₂ over the whole image on images scaled to [0, 1]."""
        return float(np.linalg.norm(self.delta.astype(np.float64) / 255))

    def summary(self) -> dict:
        """Return detections before and after, mean confidences, their drop (before − after, 0 for none), L∞ and L2.

        For a classifier: the top-1 class and its confidence before and after, and whether the top-1 changed.
        """
        if self.before.probs is not None:
            (c0, p0), (c1, p1) = ((r.probs.top1, float(r.probs.top1conf)) for r in (self.before, self.after))
            names = self.before.names
            return {
                "image": self.path,
                "top1_before": names[c0],
                "conf_before": round(p0, 5),
                "top1_after": names[c1],
                "conf_after": round(p1, 5),
                "flipped": c0 != c1,
                "linf": round(self.linf, 6),
                "l2": round(self.l2, 5),
            }
        conf = [r.boxes.conf.float().mean().item() if len(r.boxes) else 0.0 for r in (self.before, self.after)]
        return {
            "image": self.path,
            "detections_before": len(self.before.boxes),
            "detections_after": len(self.after.boxes),
            "mean_conf_before": round(conf[0], 5),
            "mean_conf_after": round(conf[1], 5),
            "mean_conf_drop": round(conf[0] - conf[1], 5),
            "linf": round(self.linf, 6),
            "l2": round(self.l2, 5),
        }

    def plot(self, min_height: int = 320) -> np.ndarray:
        """Return a side-by-side BGR picture: clean predictions | adversarial predictions | δ amplified around gray.

        Predictions are Ultralytics' own drawings: boxes, the masks of a segmentation model, a classifier's top-5.

        Small images are enlarged by an integer factor (nearest neighbour, so pixels stay visible) to at least
        `min_height` before boxes and labels are drawn.

        Args:
            min_height (int): Minimum height of each panel in pixels.

        Returns:
            (np.ndarray): (H', W', 3) uint8 BGR image.
        """
        s = max(1, math.ceil(min_height / self.orig_img.shape[0]))
        peak = max(int(np.abs(self.delta).max(initial=0)), 1)
        gain = 127 / peak
        delta = np.clip(128 + self.delta.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        eps = f"{self.eps * 255:.3g}/255"
        panels = {
            f"clean: {caption(self.before)}": _enlarged(self.before, s).plot(),
            f"{self.method} eps={eps}: {caption(self.after)}": _enlarged(self.after, s).plot(),
            f"delta x{gain:.3g} (max {peak}/255)": cv2.resize(delta, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST),
        }
        tiles = []
        for title, image in panels.items():
            scale = min(0.5, 0.9 * image.shape[1] / (9.5 * len(title)))  # fit the title to the panel's width
            strip = np.full((26, image.shape[1], 3), 255, np.uint8)
            cv2.putText(strip, title, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
            tiles += [np.vstack([strip, image]), np.full((image.shape[0] + 26, 6, 3), 255, np.uint8)]
        return np.hstack(tiles[:-1])

    def save(self, save_dir: str | Path, stem: str | None = None) -> dict:
        """Write `<stem>.png` (adversarial, lossless), `<stem>_compare.jpg` (`plot`) and `<stem>.csv` into `save_dir`.

        The CSV's first row (`stage=summary`) holds the image's detections before and after, the mean confidence drop,
        L∞ and L2 of δ (images scaled to [0, 1]); one row per detection follows (`stage` before or after, class,
        name, confidence, box corners in original-image pixels). A classifier's CSV is its one summary row.

        Args:
            save_dir (str | Path): An existing directory.
            stem (str | None): File name stem; the source's stem when None.

        Returns:
            (dict): The written paths, also kept in `files`.
        """
        save_dir, stem = Path(save_dir), stem or Path(self.path).stem
        files = {
            "adversarial": save_dir / f"{stem}.png",
            "compare": save_dir / f"{stem}_compare.jpg",
            "csv": save_dir / f"{stem}.csv",
        }
        if not cv2.imwrite(str(files["adversarial"]), self.adv_img):
            raise OSError(f"could not write {files['adversarial']}: check that the directory is writable")
        cv2.imwrite(str(files["compare"]), self.plot())
        summary = self.summary()
        if self.before.probs is not None:
            columns, rows = list(summary), [summary]
        else:
            columns, rows = CSV_COLUMNS, [{**{k: summary[k] for k in CSV_COLUMNS if k in summary}, "stage": "summary"}]
        for stage, r in (("before", self.before), ("after", self.after)) if self.before.boxes is not None else ():
            for (x1, y1, x2, y2), c, p in zip(r.boxes.xyxy.tolist(), r.boxes.cls.tolist(), r.boxes.conf.tolist()):
                rows.append(
                    {
                        "image": self.path,
                        "stage": stage,
                        "class": int(c),
                        "name": r.names[int(c)],
                        "confidence": round(p, 5),
                        "x1": round(x1, 2),
                        "y1": round(y1, 2),
                        "x2": round(x2, 2),
                        "y2": round(y2, 2),
                    }
                )
        with open(files["csv"], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        self.files = files
        return files


def _enlarged(results, s: int):
    """Return a copy of `results` on its image enlarged `s` times (nearest neighbour), boxes scaled alike (masks stay
    at their resolution: Ultralytics' plot scales them to the image)."""
    if s == 1:
        return results
    from ultralytics.engine.results import Results

    image = cv2.resize(results.orig_img, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    if results.probs is not None:
        return Results(image, path=results.path, names=results.names, probs=results.probs.data)
    data = results.boxes.data.clone()
    data[:, :4] *= s
    masks = None if results.masks is None else results.masks.data
    return Results(image, path=results.path, names=results.names, boxes=data, masks=masks)


def caption(results) -> str:
    """Describe a prediction in a few words: its detections, or a classifier's top-1 and confidence."""
    if results.probs is not None:
        return f"{results.names[results.probs.top1]} ({float(results.probs.top1conf):.2f})"
    return f"{len(results.boxes)} detections"


def write_summary(file: Path, result: AdversarialResult, first: bool) -> None:
    """Append one image's summary (and the header for the first) to the run's `summary.csv`."""
    row = {**result.summary(), "adversarial": str(result.files.get("adversarial", ""))}
    with open(file, "w" if first else "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(row))
        if first:
            writer.writeheader()
        writer.writerow(row)
