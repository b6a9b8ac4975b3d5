#!/usr/bin/env python
"""Train a YOLO detector, segmentation model or classifier with Adversarial Amendment (or a relative), `key=value`
like `yolo train`.

    python train_advamd.py                     # the embedded demo on digits-det (offline, ~5.5 min on 2 CPU cores)
    python train_advamd.py model=yolov8n.yaml data=data/digits-det.yaml hyp=hyps/advamd-pgd.yaml eps=0.01 epochs=30
    python train_advamd.py help
"""

import sys

import yolo_advamd  # noqa: F401  (offline before Ultralytics is imported)
from yolo_advamd.cli import main_train

if __name__ == "__main__":
    sys.exit(main_train())
