#!/usr/bin/env python
"""Benign and adversarial mAP of a checkpoint (stock or amended), in the layout of the paper's Table 1.

python val_advamd.py model=best.pt data=data/coco.yaml attacks=fgsm,pgd eps=0.01,0.1 baseline=stock.pt save_json=True
python val_advamd.py help
"""

import sys

import yolo_advamd  # noqa: F401  (offline before Ultralytics is imported)
from yolo_advamd.cli import main_val

if __name__ == "__main__":
    sys.exit(main_val())
