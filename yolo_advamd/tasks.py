"""The tasks yolo-advamd trains, validates, attacks and exports: one row each, read by every part that needs to know.

Adding a task (pose, obb) is adding its row: Ultralytics' classes for it, its score columns and its embedded data.
"""

from __future__ import annotations

from dataclasses import dataclass

from ultralytics.models.yolo import classify, detect, segment
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel


@dataclass(frozen=True)
class Task:
    """What one task is made of.

    Attributes:
        name (str): Ultralytics' task name.
        model (type): Its Ultralytics model class.
        trainer (type): Its Ultralytics trainer, which the AdvAmd trainer extends.
        validator (type): Its Ultralytics validator, which adversarial validation extends.
        predictor (type): Its Ultralytics predictor, which the attack API uses to show results.
        scores (dict): Its table's columns: name -> key in the validator's stats, the first one the headline score.
        data (str): Its embedded dataset, used when `data=` is not given on the command line.
        classifier (bool): Whether it classifies whole images (cross-entropy, top-1) instead of detecting objects.
    """

    name: str
    model: type
    trainer: type
    validator: type
    predictor: type
    scores: dict
    data: str
    classifier: bool = False


TASKS = {
    t.name: t
    for t in (
        Task(
            "detect",
            DetectionModel,
            detect.DetectionTrainer,
            detect.DetectionValidator,
            detect.DetectionPredictor,
            {
                "mAP50-95": "metrics/mAP50-95(B)",
                "mAP50": "metrics/mAP50(B)",
                "COCO AP50-95": "coco/AP50-95",
                "COCO AP50": "coco/AP50",
            },
            "data/digits-det.yaml",
        ),
        Task(
            "segment",
            SegmentationModel,
            segment.SegmentationTrainer,
            segment.SegmentationValidator,
            segment.SegmentationPredictor,
            {
                "mask mAP50-95": "metrics/mAP50-95(M)",
                "mask mAP50": "metrics/mAP50(M)",
                "box mAP50-95": "metrics/mAP50-95(B)",
                "box mAP50": "metrics/mAP50(B)",
            },
            "data/digits-seg.yaml",
        ),
        Task(
            "classify",
            ClassificationModel,
            classify.ClassificationTrainer,
            classify.ClassificationValidator,
            classify.ClassificationPredictor,
            {"top1": "metrics/accuracy_top1", "top5": "metrics/accuracy_top5"},
            "data/digits-cls.yaml",
            classifier=True,
        ),
    )
}


def task_row(task: str, what: str = "yolo-advamd") -> Task:
    """Return the row of `task`, refusing one no row holds, naming the supported tasks.

    Args:
        task (str): A task name ("detect", "pose", ...).
        what (str): What does not support it, for the message (e.g. "AdvAmd trains").

    Raises:
        ValueError: For a task without a row.
    """
    if task not in TASKS:
        raise ValueError(f"task={task} is not supported: {what} {', '.join(TASKS)} models")
    return TASKS[task]
