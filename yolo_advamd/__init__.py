"""yolo-advamd: Adversarial Amendment (AdvAmd) for Ultralytics YOLO detectors."""

from yolo_advamd.offline import place_font, set_offline_env

set_offline_env()  # before Ultralytics is imported anywhere below
place_font()

__version__ = "0.1.0"
