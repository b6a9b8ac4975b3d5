"""yolo-advamd: Adversarial Amendment (AdvAmd) for Ultralytics YOLO: detection, segmentation, classification."""

from yolo_advamd.offline import place_font, set_offline_env

set_offline_env()  # before Ultralytics is imported anywhere below
place_font()

import yolo_advamd.nn  # noqa: E402, F401  (registers the dual-BN classes for ULTRALYTICS_SAFE_LOAD=1 loading)

__version__ = "0.3.0"


def __getattr__(name):
    """Import `attack` on first use (it loads the attack API): `from yolo_advamd import attack`."""
    if name == "attack":
        from yolo_advamd.attack_api import attack

        return attack
    raise AttributeError(f"module 'yolo_advamd' has no attribute {name!r}")
