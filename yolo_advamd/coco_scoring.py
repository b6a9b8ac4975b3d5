"""COCO scoring of a detection validator's `save_json` predictions with pycocotools.

Ultralytics 8.4 scores `save_json` predictions with faster-coco-eval, which it would try to pip-install; `COCOScoring`
scores them with pycocotools instead, so nothing is ever installed, against the dataset's COCO JSON or the COCO-format
ground truth Ultralytics builds from the YOLO labels.

Examples:
    >>> class MyValidator(COCOScoring, DetectionValidator): ...
    >>> stats = MyValidator(args=dict(data="coco.yaml", save_json=True))(model=model)  # stats["coco/AP50-95"], ...
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER

COCO_STATS = (  # the 12 numbers of pycocotools' COCOeval.summarize(), in order
    "AP50-95",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


class COCOScoring:
    """Mixed into a `DetectionValidator` (before it): `save_json` predictions scored with pycocotools.

    Attributes:
        score_json (bool): Whether `save_json` was asked for (Ultralytics also forces it on COCO and LVIS).
        coco (dict): pycocotools stats of the last run with `save_json=True` (`coco/AP50-95`, ...).
    """

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None):
        """Initialize the validator as Ultralytics does and note whether `save_json` was asked for."""
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.score_json = self.args.save_json  # asked for; Ultralytics also forces save_json on COCO and LVIS
        self.coco = {}

    def __call__(self, trainer=None, model=None):
        """Validate like Ultralytics; with `save_json` and no prediction at all, every COCO statistic is 0."""
        stats = super().__call__(trainer, model)
        if self.score_json and not self.jdict and not self.training:  # Ultralytics skips scoring an empty JSON
            self.coco = {f"coco/{k}": 0.0 for k in COCO_STATS}
            stats.update(self.coco)
        return stats

    def eval_json(self, stats: dict) -> dict:
        """Score the predictions with pycocotools and add `coco/<stat>` entries to `stats` (never installs anything).

        The ground truth is the dataset's COCO JSON: `annotations/instances_val2017.json` for COCO, the data YAML's
        `coco_json` (digits-det: `annotations/instances_val.json`), else the COCO-format ground truth Ultralytics
        built from the YOLO labels (written as `ground_truth.json`). Predictions are matched to its images by file
        name (else by numeric stem) and to its categories by class name (else by Ultralytics' class map), and are
        rewritten in COCO results format to `predictions.json`.
        """
        try:
            file = coco_json_file(self)
        except FileNotFoundError as e:
            if self.score_json:
                raise
            LOGGER.warning(f"COCO evaluation skipped: {e}")  # COCO without its JSON, save_json not asked for
            return stats
        gt = coco_ground_truth(file or self.gdict)
        names = {Path(img.get("file_name", "")).name: i for i, img in gt.imgs.items()}
        categories = category_map(gt, self.names, self.class_map)
        if file is None:  # Ultralytics' labels-as-COCO ground truth, whose image ids are dataloader indices
            (self.save_dir / "ground_truth.json").write_text(json.dumps(self.gdict))
            ids = iter(image["id"] for image, n in zip(self.gdict["images"], self.pred_counts) for _ in range(n))
            preds = [{**p, "image_id": next(ids)} for p in self.jdict]
            img_ids = gt.getImgIds()
        else:
            preds = [{**p, "image_id": names.get(p["file_name"], p["image_id"])} for p in self.jdict]
            img_ids = [names.get(Path(f).name, _stem_id(f)) for f in self.dataloader.dataset.im_files]
        preds = [{**p, "category_id": categories[p["category_id"]]} for p in preds if p["image_id"] in gt.imgs]
        (self.save_dir / "predictions.json").write_text(json.dumps(preds))
        self.coco = {f"coco/{k}": v for k, v in zip(COCO_STATS, coco_evaluate(gt, preds, img_ids))}
        for size in ("small", "medium", "large"):  # Ultralytics' placeholders for these, filled as it does
            stats[f"metrics/mAP_{size}(B)"] = self.coco[f"coco/AP_{size}"]
        stats.update(self.coco)
        return stats


def coco_json_file(validator: DetectionValidator) -> Path | None:
    """Return the dataset's COCO ground-truth JSON (COCO: instances_val2017.json, else the YAML's `coco_json`) or None.

    Raises:
        FileNotFoundError: If the dataset names a COCO JSON that is not on disk.
    """
    root = Path(validator.data["path"])
    if validator.is_coco:
        file = root / "annotations" / "instances_val2017.json"
    elif validator.data.get("coco_json"):
        file = root / validator.data["coco_json"]
    else:
        return None
    if not file.is_file():
        raise FileNotFoundError(
            f"save_json=True scores against the COCO ground truth {file}, which does not exist: put the dataset's COCO "
            "JSON there (COCO: annotations/instances_val2017.json, see data/coco.yaml) or validate with save_json=False"
        )
    return file


def coco_ground_truth(source: Path | dict):
    """Return a pycocotools COCO object from a COCO JSON file or dict, without its console output."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = json.loads(Path(source).read_text()) if isinstance(source, Path) else source
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _stem_id(file: str) -> int | str:
    """Return an image's id as Ultralytics derives it: the integer file stem, else the stem itself."""
    stem = Path(file).stem
    return int(stem) if stem.isnumeric() else stem


def category_map(gt, names: dict, class_map: list) -> dict:
    """Map Ultralytics' category ids (`class_map[class]`) to the ground truth's: by class name when all names match."""
    by_name = {c["name"]: c["id"] for c in gt.cats.values() if "name" in c}
    if all(name in by_name for name in names.values()):
        return {class_map[int(k)]: by_name[name] for k, name in names.items()}
    return {i: i for i in class_map}


def coco_evaluate(gt, preds: list, img_ids: list) -> list[float]:
    """Run pycocotools' bbox COCOeval on `img_ids` and return its 12 summary numbers (zeros without predictions)."""
    from pycocotools.cocoeval import COCOeval

    if not preds:
        return [0.0] * len(COCO_STATS)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluator = COCOeval(gt, gt.loadRes(preds), "bbox")
        evaluator.params.imgIds = sorted(set(img_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    LOGGER.info(f"pycocotools bbox evaluation:\n{out.getvalue().split('DONE')[-1].strip()}")
    return [float(s) for s in evaluator.stats]  # -1: no ground truth in that area range (pycocotools convention)
