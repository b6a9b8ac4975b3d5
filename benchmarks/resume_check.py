"""Does a resumed run end with the weights of an uninterrupted one? Stock Ultralytics versus AdvAmd, on the CPU.

For each trainer, one 2-epoch run straight through and one interrupted after epoch 1 and resumed (`resume=True`), both
seeded with `deterministic=True` (yolov8n, 64 px, a 32-scene digits-det build); prints the largest absolute difference
between their final EMA weights. AdvAmd can only be as exact as Ultralytics' own resume: compare the two rows.

Examples:
    $ python benchmarks/resume_check.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Interrupt(Exception):
    """Raised by a callback to stop a run after its first epoch, as a crash would."""


def interrupt(trainer) -> None:
    """Stop training after the first epoch's checkpoint is written."""
    raise Interrupt


def max_weight_difference(trainer_class, settings: dict, project: Path) -> float:
    """Train straight through and with an interruption after epoch 1; return max |w_straight - w_resumed|."""
    from ultralytics.utils.patches import torch_load

    straight = trainer_class(overrides={**settings, "project": str(project), "name": "straight"})
    straight.train()
    first = trainer_class(overrides={**settings, "project": str(project), "name": "resumed"})
    first.add_callback("on_fit_epoch_end", interrupt)
    try:
        first.train()
    except Interrupt:
        pass
    resumed = trainer_class(overrides={"resume": str(first.last)})
    resumed.train()
    a, b = (torch_load(t.last, map_location="cpu") for t in (straight, resumed))
    wa, wb = ((c["ema"] or c["model"]).float().state_dict() for c in (a, b))
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main() -> None:
    """Print the difference for stock Ultralytics and for AdvAmd (FGSM)."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
    from yolo_advamd.cli import use_all_cores
    from yolo_advamd.data import resolve_dataset
    from yolo_advamd.trainer import AdvAmdTrainer

    use_all_cores()
    with tempfile.TemporaryDirectory(prefix="advamd-resume-") as tmp:
        tmp = Path(tmp)
        (tmp / "tiny.yaml").write_text("builder: digits-det\nseed: 3\nn_train: 32\nn_val: 16\nimgsz: 64\n")
        settings = {
            "model": "yolov8n.yaml",
            "data": str(resolve_dataset(str(tmp / "tiny.yaml"))),
            "epochs": 2,
            "imgsz": 64,
            "batch": 8,
            "workers": 0,
            "optimizer": "SGD",
            "lr0": 0.01,
            "warmup_epochs": 0,
            "deterministic": True,
            "seed": 0,
            "plots": False,
            "verbose": False,
        }
        rows = [
            ("stock DetectionTrainer", max_weight_difference(DetectionTrainer, settings, tmp / "stock")),
            ("AdvAmdTrainer fgsm", max_weight_difference(AdvAmdTrainer, {**settings, "abar_batches": 2}, tmp / "amd")),
        ]
    print(f"\n{'trainer':24s}{'max |w_straight - w_resumed|':>30s}")
    for name, diff in rows:
        print(f"{name:24s}{diff:30.3g}")


if __name__ == "__main__":
    main()
