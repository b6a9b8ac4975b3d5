#!/usr/bin/env python
"""Export an amended (or stock) checkpoint as a plain, stock Ultralytics model: zero inference overhead.

python export.py model=best.pt format=onnx          # also engine, torchscript, openvino, ... (Ultralytics' exporter)
python export.py model=best.pt format=pt            # a stock Ultralytics checkpoint: YOLO(path) loads it anywhere
python export.py model=best.pt format=state_dict    # weights only, for torch.load(weights_only=True)
"""

import sys

import yolo_advamd  # noqa: F401  (offline before Ultralytics is imported)
from yolo_advamd.cli import main_export

if __name__ == "__main__":
    sys.exit(main_export())
