"""yolo-advamd: Adversarial Amendment (AdvAmd) for Ultralytics YOLO detectors."""

from yolo_advamd.offline import place_font, set_offline_env

set_offline_env()  # before Ultralytics is imported anywhere below
place_font()

import yolo_advamd.nn  # noqa: E402, F401  (registers the dual-BN classes for ULTRALYTICS_SAFE_LOAD=1 loading)

__version__ = "0.1.0"
