#!/usr/bin/env python
"""Adversarial images from an Ultralytics detector, segmentation model or classifier, at their original size, with or
without labels.

    python attack.py model=best.pt source=images/ method=fgsm eps=0.03          # pseudo-targets: the model's own boxes
    python attack.py model=best.pt source=images/ method=pgd eps=8/255 steps=10 objective=vanish
    python attack.py model=best.pt data=data/digits-det.yaml split=val method=pgd eps=8/255   # ground-truth targets
    python attack.py help

Writes runs/attack/expN/: adversarial PNGs, a side-by-side JPG and a CSV per image, and summary.csv.
"""

import sys

import yolo_advamd  # noqa: F401  (offline before Ultralytics is imported)
from yolo_advamd.cli import main_attack

if __name__ == "__main__":
    sys.exit(main_attack())
