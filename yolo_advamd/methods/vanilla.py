"""Vanilla: stock Ultralytics training, the control."""

from yolo_advamd.methods.base import Method


class Vanilla(Method):
    """Vanilla: the task's Ultralytics trainer, bit for bit: no attack, no extra view."""

    name = "vanilla"
    about = "stock Ultralytics training, bit for bit (the control)"
    amends = False
    attacks = False
