"""Crowded synthetic detection scenes written as a YOLO dataset, for benchmarks at COCO-like object and class counts."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np


def crowded_scenes(root: Path, n: int = 8, imgsz: int = 128, nc: int = 80, objects: int = 20, seed: int = 0) -> Path:
    """Write `n` scenes of `objects` colored squares on noise (one per grid cell, colored by class); return the YAML.

    The same scenes serve as the train and the val split. Classes are drawn uniformly from `nc`; class c has its own
    color, so a model can learn them.
    """
    g = np.random.default_rng(seed)
    palette = np.array([[40 + 50 * (c % 5), 50 + 60 * (c // 5 % 4), 50 + 60 * (c // 20 % 4)] for c in range(nc)])
    cols = math.ceil(math.sqrt(objects * 1.25))
    cw, ch = imgsz / cols, imgsz / math.ceil(objects / cols)
    for split in ("images", "labels"):
        (root / split / "val").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = g.integers(60, 200, (imgsz, imgsz, 3)).astype(np.uint8)
        lines = []
        for cell in range(objects):
            c = int(g.integers(nc))
            w, h = g.uniform(0.45, 0.8) * cw, g.uniform(0.45, 0.8) * ch
            x0, y0 = (cell % cols) * cw + g.uniform(0, cw - w), (cell // cols) * ch + g.uniform(0, ch - h)
            image[int(y0) : int(y0 + h), int(x0) : int(x0 + w)] = palette[c]
            lines.append(f"{c} {(x0 + w / 2) / imgsz:.6f} {(y0 + h / 2) / imgsz:.6f} {w / imgsz:.6f} {h / imgsz:.6f}")
        cv2.imwrite(str(root / "images" / "val" / f"{i:04d}.png"), image)
        (root / "labels" / "val" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {c}: c{c}\n" for c in range(nc))
    yaml = root / f"scenes-{objects}x{nc}.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n{names}")
    return yaml
