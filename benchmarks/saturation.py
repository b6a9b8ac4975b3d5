"""What does deploying a distilled detector at T = 1 cost by itself? Validate a checkpoint with its class logits
multiplied by T, untrained: where a Def-Distill student starts (`yolo_advamd.distill.scale_class_logits`).

Its scores saturate (sigmoid(T z)): the ranking that mAP reads is lost where scores tie at 1, and detections scoring
below 1/2 before fall under the confidence threshold. Box regression and the classes' order are untouched.

Usage:
    python benchmarks/saturation.py                                   # M_T of the full profile, T = 1 and 100
    python benchmarks/saturation.py model=runs/detect/train/weights/best.pt data=data/coco.yaml imgsz=640
"""

from __future__ import annotations

import sys

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd.data import resolve_dataset
from yolo_advamd.distill import scale_class_logits

DEFAULTS = {"model": "docs/results/targets/full.pt", "data": "data/digits-det.yaml", "imgsz": "160", "t": "1,100"}


def main(model: str, data: str, imgsz: int, temperatures: list[float], project: str = "runs/saturation") -> list[str]:
    """Validate `model` with its class logits times each T; return (and print) one line per T."""
    from ultralytics import YOLO

    lines = [f"{model} on {data} at {imgsz} px, class logits x T, no training (box metrics, %):"]
    for t in temperatures:
        yolo = YOLO(model)
        scale_class_logits(yolo.model.float(), t)
        r = yolo.val(
            data=resolve_dataset(data),
            imgsz=imgsz,
            half=False,
            plots=False,
            verbose=False,
            project=project,
            name=f"T{t:g}",
            exist_ok=True,
        ).box
        lines.append(f"T = {t:g}: mAP50-95 {100 * r.map:.2f}, mAP50 {100 * r.map50:.2f}, P {r.mp:.3f}, R {r.mr:.3f}")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    settings = {**DEFAULTS, **dict(arg.split("=", 1) if "=" in arg else (arg, None) for arg in sys.argv[1:])}
    if unknown := set(settings) - set(DEFAULTS):
        raise SystemExit(f"unknown setting {sorted(unknown)[0]!r}: saturation.py takes {', '.join(DEFAULTS)}")
    ts = [float(t) for t in settings["t"].split(",")]
    main(settings["model"], settings["data"], int(settings["imgsz"]), ts)
