"""Training methods, one class per file, registered here by their `method=` name.

Adding a method: copy the file of the closest one (`advtrain.py` for a preset of AdvAmd's switches, `udfa.py` for a
method with a teacher and a loss of its own), change what differs, and add its class to `METHODS`.
"""

from yolo_advamd.methods.advamd import AdvAmd
from yolo_advamd.methods.advtrain import AdvTrain
from yolo_advamd.methods.base import Method
from yolo_advamd.methods.detadvprop import DetAdvProp
from yolo_advamd.methods.distill import Distill
from yolo_advamd.methods.magnet import MagNet
from yolo_advamd.methods.udfa import UDFA
from yolo_advamd.methods.vanilla import Vanilla

METHODS: dict[str, type[Method]] = {m.name: m for m in (AdvAmd, AdvTrain, DetAdvProp, Distill, MagNet, UDFA, Vanilla)}

__all__ = ("METHODS", "Method", "check_method")


def check_method(cfg: dict, task: str | None = None) -> type[Method]:
    """Return the class of the method `cfg` names, refusing settings that contradict it and a task it does not train.

    Args:
        cfg (dict): Every AdvAmd setting, `method` a registered name.
        task (str | None): The run's task, when known.

    Raises:
        ValueError: Naming the key and the fix.
    """
    method = METHODS[cfg["method"]]
    method.check(cfg)
    if task is not None and task not in method.tasks:
        fit = [name for name, m in METHODS.items() if task in m.tasks]
        raise ValueError(
            f"method={method.name} is a detection method (box attacks, neck features): for task={task} "
            f"use method={', '.join(fit[:-1])} or {fit[-1]}"
        )
    return method
