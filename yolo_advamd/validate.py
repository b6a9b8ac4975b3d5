"""Benign and adversarial validation: mAP (or accuracy) per attack × ε laid out like the paper's Table 1.

Every evaluation runs the task's own Ultralytics validator (dataloader, letterbox or crop, NMS, matching, metrics)
through a subclass (`VALIDATORS`: detection, segmentation, classification) whose `preprocess` replaces each batch's
images by their adversarial version (`AdversarialValidation`), attacked white-box on the device against an fp32,
eval-mode copy of the model under test (or, in the transfer setting, of `attack_model`), with the model's own loss
on the ground truth as the objective (for segmentation the full seg loss, for classification the cross-entropy), or
with `attack_labels=pred` on the attacked model's own predictions (`attacks.targets`); scores stay on the ground truth.
Detection adds COCO scoring: `eval_json` scores `save_json` predictions with pycocotools (Ultralytics 8.4 uses
faster-coco-eval, which it would try to pip-install), so nothing is ever installed.

With `corruptions=` each model is also scored on the val set under common corruptions (`yolo_advamd.corruptions`:
the COCO-C protocol, cached corrupted copies of the split read through the validator's `images`), and the table gains
the benchmark's mPC and rPC.

Models are always evaluated, and attacked, through the main BN (the paper's footnote 8): the auxiliary BN and all
AdvAmd state are stripped from every model before use.

Examples:
    >>> results = validate_advamd("advamd.pt", "data/digits-det.yaml", attacks="fgsm,pgd", eps="0.01,0.1",
    ...                           baseline="vanilla.pt", save_json=True)
    >>> print(results["markdown"])
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import cv2
import torch
import yaml
from torch import nn
from ultralytics.cfg import check_dict_alignment, get_save_dir
from ultralytics.models.yolo.classify import ClassificationValidator
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.segment import SegmentationValidator
from ultralytics.utils import (
    DEFAULT_CFG_DICT,
    LOGGER,
    IterableSimpleNamespace,
    colorstr,
)
from ultralytics.utils.torch_utils import select_device

from yolo_advamd.attacks import build_attack
from yolo_advamd.attacks.objectives import check_terms
from yolo_advamd.attacks.settings import attack_settings, check_attack_labels, parse_eps
from yolo_advamd.attacks.strategies import attack_batch
from yolo_advamd.attacks.targets import attack_targets
from yolo_advamd.checkpoint import attack_copy, check_local_weights, load_model, task_of
from yolo_advamd.corruptions import (
    MPC,
    RPC,
    SEVERITIES,
    corrupted_sets,
    corruption_split,
    grid,
    mpc_note,
    parse_corruptions,
    parse_severities,
    robustness,
)
from yolo_advamd.corruptions import column_name as corruption_column
from yolo_advamd.data import resolve_dataset
from yolo_advamd.plotting import plot_corruptions

BENIGN = "benign"
WHITE_BOX = "adversarial validation needs the model's gradients (exported formats such as ONNX cannot be attacked)"
COCO_STATS = (  # the 12 numbers of pycocotools' COCOeval.summarize(), in order
    "AP50-95", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip
TABLE_METRICS = {  # per task: table name -> key in a run's stats
    "detect": {"mAP50-95": "metrics/mAP50-95(B)", "mAP50": "metrics/mAP50(B)", "COCO AP50-95": "coco/AP50-95",
               "COCO AP50": "coco/AP50"},
    "segment": {"mask mAP50-95": "metrics/mAP50-95(M)", "mask mAP50": "metrics/mAP50(M)",
                "box mAP50-95": "metrics/mAP50-95(B)", "box mAP50": "metrics/mAP50(B)"},
    "classify": {"top1": "metrics/accuracy_top1", "top5": "metrics/accuracy_top5"},
}  # fmt: skip


class AdversarialValidation:
    """An Ultralytics validator on adversarial images: each batch is attacked white-box before inference.

    With `attack=None` it is the task's stock validator (benign images). Mixed in before the task's validator class.
    With `images` it scores that folder (a corrupted copy of the split, same layout and labels) instead of the split.

    Attributes:
        attack (Attack | None): The attack applied to every batch before inference.
        attack_model (nn.Module | None): The fp32, eval-mode model the attack differentiates (white-box: a copy of
            the model under test; transfer: another model), on the validation device.
        terms (str): The attacked part of the loss: "all", "cls", "box" (box + dfl) or "max" (the stronger of a cls and
            a box attack, per image); a classifier's is its cross-entropy.
        images (Path | None): The images to score instead of the split's (`corrupted_sets`), or None.
        attack_labels (str): The attack's targets: "gt" (the batch's ground truth) or "pred" (the attacked model's
            predictions on the clean images).
        attack_conf (float): Confidence above which a prediction is a target with `attack_labels="pred"`.

    Examples:
        >>> v = AdvDetectionValidator(args=dict(data="coco.yaml"), attack=build_attack("fgsm", eps=0.01),
        ...                           attack_model=fp32_eval_model)
        >>> stats = v(model=model)
    """

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, attack=None,
                 attack_model: nn.Module | None = None, terms: str = "all", attack_labels: str = "gt",
                 attack_conf: float = 0.25, images: Path | None = None):  # fmt: skip
        """Initialize the validator; see the class attributes for the AdvAmd arguments."""
        super().__init__(dataloader, save_dir, args, _callbacks)
        if attack is not None and attack_model is None:
            raise ValueError("an attack needs attack_model=: the fp32 eval-mode model whose gradients it follows")
        self.attack, self.attack_model, self.terms, self.images = attack, attack_model, terms, images
        self.attack_labels, self.attack_conf = check_attack_labels(attack_labels, attack_conf), attack_conf

    def get_dataloader(self, dataset_path, batch_size: int):
        """Return Ultralytics' val dataloader, on `images` instead of the split's when given."""
        return super().get_dataloader(str(self.images) if self.images else dataset_path, batch_size)

    def preprocess(self, batch: dict) -> dict:
        """Preprocess like Ultralytics, then replace `img` by its adversarial version."""
        batch = super().preprocess(batch)
        if self.attack is not None:
            batch["img"] = self.adversarial(batch).to(batch["img"].dtype)
        return batch

    def adversarial(self, batch: dict) -> torch.Tensor:
        """Return the batch's images attacked against `attack_model` (float32, in the attack's clip range).

        The validator runs under `torch.inference_mode`, whose tensors cannot enter autograd: the batch is cloned
        into normal tensors with inference mode off and gradients on, and the attack runs in fp32 even when the
        validated model runs in fp16.
        """
        with torch.inference_mode(False), torch.enable_grad():
            clean = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            clean["img"] = clean["img"].float()
            result, _ = attack_batch(self.attack, self.attack_model, self.attack_targets_of(clean), self.terms)
            return (clean["img"] + result.delta.detach()).clamp_(*self.attack.clip)

    def attack_targets_of(self, batch: dict) -> dict:
        """Return the batch the attack takes its targets from: `batch` (ground truth) or the attacked model's
        predictions on its images (`attack_labels`)."""
        return attack_targets(self.attack_model, batch, self.attack_labels, self.attack_conf)


class AdvSegmentationValidator(AdversarialValidation, SegmentationValidator):
    """Ultralytics' SegmentationValidator (mask and box mAP) on adversarial images, attacked on the full seg loss."""


class AdvClassificationValidator(AdversarialValidation, ClassificationValidator):
    """Ultralytics' ClassificationValidator (top-1, top-5) on adversarial images, attacked on the cross-entropy."""


class AdvDetectionValidator(AdversarialValidation, DetectionValidator):
    """Ultralytics' DetectionValidator on adversarial images, with COCO JSON scored by pycocotools and an optional
    adversarial copy of the val set.

    Attributes:
        adv_dir (Path | None): Where adversarial images and labels are written in YOLO layout (`images/`, `labels/`).
        coco (dict): pycocotools stats of the last run with `save_json=True` (`coco/AP50-95`, ...).
    """

    def __init__(self, *args, adv_dir: str | Path | None = None, **kwargs):
        """Initialize the validator; `adv_dir` as the class attribute, the rest as `AdversarialValidation`."""
        super().__init__(*args, **kwargs)
        self.adv_dir = None if adv_dir is None else Path(adv_dir)
        self.adv_root = None  # common folder of the val images, for flat names of the saved copies
        self.score_json = self.args.save_json  # asked for; Ultralytics also forces save_json on COCO and LVIS
        self.coco = {}

    def __call__(self, trainer=None, model=None):
        """Validate like Ultralytics; with `save_json` and no prediction at all, every COCO statistic is 0."""
        stats = super().__call__(trainer, model)
        if self.score_json and not self.jdict and not self.training:  # Ultralytics skips scoring an empty JSON
            self.coco = {f"coco/{k}": 0.0 for k in COCO_STATS}
            stats.update(self.coco)
        return stats

    def preprocess(self, batch: dict) -> dict:
        """Preprocess and attack (`AdversarialValidation`), then save the images if asked."""
        batch = super().preprocess(batch)
        if self.adv_dir is not None:
            self.save_images(batch)
        return batch

    def save_images(self, batch: dict) -> None:
        """Write the batch's (adversarial) images as PNG and their labels as YOLO txt into `adv_dir`.

        The images are what the model saw: letterboxed by the val dataloader (long side resized to `imgsz`, then
        padded with gray 114 to imgsz x imgsz, or to the batch's rectangle with `rect=True`), then attacked; the
        labels (normalized `class x y w h`) are in that frame, so validating the copy at the same `imgsz` feeds the
        model the same pixels. PNG stores 8 bits: pixel values are rounded to multiples of 1/255, so the saved
        perturbation differs from the attacked one by at most 0.5/255 per pixel. File names keep the source's stem
        (nested folders joined by `_`), so COCO image ids derived from stems stay valid.
        """
        images = (batch["img"].float() * 255).round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        for i, (file, image) in enumerate(zip(batch["im_file"], images)):
            file = Path(file)
            parts = file.relative_to(self.adv_root).with_suffix("").parts if file.is_relative_to(self.adv_root) else ()
            stem = "_".join(parts) or file.stem
            cv2.imwrite(str(self.adv_dir / "images" / f"{stem}.png"), image[..., ::-1])  # RGB -> BGR for OpenCV
            keep = batch["batch_idx"] == i
            lines = [
                f"{int(c)} " + " ".join(f"{v:.6f}" for v in box)
                for c, box in zip(batch["cls"][keep].view(-1).tolist(), batch["bboxes"][keep].tolist())
            ]
            (self.adv_dir / "labels" / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))

    def init_metrics(self, model: nn.Module) -> None:
        """Initialize Ultralytics' metrics and, with `adv_dir`, the adversarial dataset's folders and data YAML."""
        super().init_metrics(model)
        if self.adv_dir is not None:
            self.adv_root = Path(os.path.commonpath([os.path.dirname(f) for f in self.dataloader.dataset.im_files]))
            for sub in ("images", "labels"):
                (self.adv_dir / sub).mkdir(parents=True, exist_ok=True)
            (self.adv_dir / "data.yaml").write_text(
                f"# adversarial copy of {self.args.data} ({self.args.split}), letterboxed to imgsz={self.args.imgsz}\n"
                + yaml.safe_dump({"path": str(self.adv_dir.resolve()), "train": "images", "val": "images",
                                  "names": {int(k): str(v) for k, v in model.names.items()}}, sort_keys=False)
            )  # fmt: skip

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


VALIDATORS = {"detect": AdvDetectionValidator, "segment": AdvSegmentationValidator, "classify": AdvClassificationValidator}


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


def as_list(value, cast, key: str) -> list:
    """Parse a CLI list (`"fgsm,pgd"`, `"0.01,0.1"`, a number, a list or tuple) into a list of `cast` values."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        return [cast(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip()]
    except ValueError as e:
        raise ValueError(f"{key}={value!r} is not a comma-separated list, e.g. {key}=0.01,8/255 ({e})") from e


def column_name(attack: str, eps: float) -> str:
    """Return the table column of an attack and budget, e.g. `fgsm eps=0.01`."""
    return f"{attack} eps={eps:g}"


def validate_advamd(
    model: str | Path | nn.Module,
    data: str,
    attacks: str | list[str] = ("fgsm", "pgd"),
    eps: str | float | list[float] = (0.01, 0.1),
    baseline: str | Path | nn.Module | None = None,
    attack_model: str | Path | nn.Module | None = None,
    save_json: bool = False,
    save_adv: bool = False,
    imgsz: int | None = None,
    batch: int = 16,
    device: str | None = None,
    project: str | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    norm: str | int = "inf",
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool | None = None,
    deepfool: str | None = None,
    attack_terms: str = "all",
    attack_labels: str = "gt",
    attack_conf: float = 0.25,
    seed: int = 0,
    corruptions: str | list[str] | None = None,
    severities: str | list[int] = SEVERITIES,
    **overrides,
) -> dict:
    """Validate a model (detect, segment, classify) on the benign val set and on its adversarial versions; write the table.

    Each model (and `baseline`) is evaluated on the benign images, then once per attack × ε on images attacked
    batch-wise on the device, white-box against that same model, or against `attack_model` when one is named (the
    transfer setting: the same attacked model then serves every row). Models are stripped to their main BN first.

    Args:
        model (str | Path | nn.Module): The model under test: an amended or stock `.pt` checkpoint.
        data (str): Data YAML (or a classification folder), e.g. `data/coco.yaml`, or an embedded set
            (`data/digits-det.yaml`, `data/digits-seg.yaml`, `data/digits-cls.yaml`, built on first use).
        attacks (str | list[str]): Attack names (`fgsm`, `pgd`, `deepfool`), comma-separated or a list; empty for
            benign validation only.
        eps (str | float | list[float]): L-inf (or L2) budgets on images scaled to [0, 1], comma-separated or a list,
            each a number or a fraction such as 8/255, in (0, 1] for L-inf.
        baseline (str | Path | nn.Module | None): A second model evaluated the same way; the table adds its row and
            the Δ (model − baseline).
        attack_model (str | Path | nn.Module | None): Transfer setting: attack this model instead of each evaluated one.
        save_json (bool): Write COCO-format predictions per run and score them with pycocotools (`coco/...`).
        save_adv (bool): Write each attacked val set as PNG images and YOLO labels (see
            `AdvDetectionValidator.save_images`), with a `data.yaml` other tools can read.
        imgsz (int | None): Validation image size; the model's training `imgsz` when None.
        batch (int): Validation batch size (attacks run on a whole batch at once).
        device (str | None): Ultralytics device string, e.g. `0` or `cpu`.
        project (str | None): Parent directory of the run; `<Ultralytics runs_dir>/advamd_val` when None.
        name (str | None): Run name, `exp` when None, incremented (`exp2`, ...) unless `exist_ok`.
        exist_ok (bool): Reuse an existing run directory.
        norm (str | int): Attack norm, `inf` or 2.
        steps (int | None): Iterations of pgd and deepfool (`DEFAULT_STEPS`: 10 and 5 when None); fgsm is always one
            step of ε.
        step_size (float | None): Per-step size of pgd and deepfool; the attack's default when None.
        random_start (bool | None): Start from a random point of the ε-ball; True for pgd only when None.
        deepfool (str | None): DeepFool's variant, `fast` or `exact` (the paper's); `fast` when None.
        attack_terms (str): The attacked part of the detection loss: `all` (box + cls + dfl), `cls`, `box` (box + dfl)
            or `max` (the stronger of a cls and a box attack, per image).
        attack_labels (str): The attacks' targets: `gt` (the ground truth) or `pred` (the attacked model's own
            predictions on the clean images: detections above `attack_conf` after NMS, a classifier's top-1).
        attack_conf (float): Confidence in (0, 1) above which a prediction is a target with `attack_labels=pred`.
        seed (int): Seed of the attacks' randomness.
        corruptions (str | list[str] | None): Also score each model under common corruptions (COCO-C protocol):
            `common` (the benchmark's 15), `all` (with the 4 held-out ones) or names, comma-separated or a list; the
            table adds mPC and rPC, and `corruptions.png` the score per corruption × severity.
        severities (str | list[int]): The corruption severities, 1 to 5.
        **overrides (Any): Ultralytics val settings (`conf`, `iou`, `max_det`, `split`, `quantize`, `workers`,
            `plots`, `fraction`, ...), checked by Ultralytics (deprecated keys such as `half` are mapped).

    Returns:
        (dict): `columns`, `rows` (per model: `name`, `attacked_by`, `stats` per column), `delta` (with a
            baseline), `corruptions` (names, severities and set columns), `settings`, `save_dir`, and the rendered
            `markdown` table.
    """
    attacks = [a.lower() for a in as_list(attacks or [], str, "attacks") if a.lower() != "none"]
    eps = as_list(eps, parse_eps, "eps")
    if attacks and not eps:
        raise ValueError("eps is empty: give at least one budget for the attacks, e.g. eps=0.01,0.1")
    if deepfool is not None and "deepfool" not in attacks:
        raise ValueError(f"deepfool={deepfool} chooses DeepFool's variant: add deepfool to attacks, or drop deepfool=")
    attack_kwargs = {"norm": norm, "steps": steps, "step_size": step_size, "random_start": random_start,
                     "deepfool": deepfool, "seed": seed}  # fmt: skip
    build_attacks(attacks, eps, **attack_kwargs)  # every setting checked before any work
    corruptions, severities = parse_corruptions(corruptions), parse_severities(severities)
    attack_labels = check_attack_labels(attack_labels, attack_conf)
    check_dict_alignment(DEFAULT_CFG_DICT, overrides)  # Ultralytics' own check: SyntaxError with suggestions
    for key, m in (("model", model), ("baseline", baseline), ("attack_model", attack_model)):
        if m is not None and not isinstance(m, nn.Module):
            check_local_weights(m, WHITE_BOX, key)
    roles = (("model", model), ("baseline", baseline), ("attack_model", attack_model))
    models = {role: load_model(m, WHITE_BOX, role) for role, m in roles if m is not None}
    task = check_tasks({role: task_of(net) for role, (net, *_) in models.items()}, save_json, save_adv)
    attack_terms = str(attack_terms).lower()
    check_terms(attack_terms, classifier=task == "classify")
    attacker = models.pop("attack_model", None)
    data = resolve_dataset(data)
    val_split = corruption_split(data, task, overrides.get("split") or "val") if corruptions else None
    save_dir = get_save_dir(
        IterableSimpleNamespace(project=project, name=name or "exp", task="advamd_val", mode="val", exist_ok=exist_ok)
    )
    save_dir.mkdir(parents=True, exist_ok=True)
    dev = select_device(device, batch, verbose=False)
    transfer = None
    if attacker is not None:
        net, label, train_args = attacker
        transfer = (attack_copy(net, train_args, dev), f"{label} (transfer)")
    settings = {"data": str(data), "attacks": attacks, "eps": eps, **attack_kwargs, "attack_terms": attack_terms,
                "attack_labels": attack_labels, "attack_conf": attack_conf, "attack_model": transfer and transfer[1],
                "corruptions": corruptions, "severities": severities, "batch": batch, "imgsz": imgsz,
                **overrides}  # fmt: skip
    sets = corrupted_sets(val_split, corruptions, severities) if corruptions else {}
    val_args = {**overrides, "data": data, "imgsz": imgsz, "batch": batch, "device": device, "save_json": save_json,
                "plots": overrides.get("plots", False), "mode": "val"}  # fmt: skip
    rows = []
    for role, (net, label, train_args) in models.items():
        victim, attacked_by = transfer or (attack_copy(net, train_args, dev), f"{label} (white-box)")
        row = {"name": label, "role": role, "attacked_by": attacked_by, "stats": {}}
        attack_runs = build_attacks(attacks, eps, **attack_kwargs)  # fresh attacks: same seeds per row
        runs = [(BENIGN, None, None), *((c, a, None) for c, a in attack_runs.items()),
                *((corruption_column(*ns), None, images) for ns, images in sets.items())]  # fmt: skip
        loader = None  # built by the first run, shared by the others on the split's own images
        for i, (column, attack, images) in enumerate(runs, 1):
            LOGGER.info(f"\n{colorstr('bold', f'{role} {label}')}: {column} ({i}/{len(runs)})")
            run_dir = save_dir / role / column.replace(" ", "_")
            validator = VALIDATORS[task](
                dataloader=None if images else loader,
                save_dir=run_dir,
                args={**val_args, "imgsz": imgsz or train_args.get("imgsz", 640)},
                attack=attack,
                attack_model=victim,
                terms=attack_terms,
                images=images,
                attack_labels=attack_labels,
                attack_conf=attack_conf,
                **({"adv_dir": run_dir / "adversarial"} if save_adv and attack is not None else {}),
            )
            row["stats"][column] = {k: float(v) for k, v in validator(model=net).items()}
            loader = loader if images else validator.dataloader
        if sets:
            row["stats"].update(robustness(row["stats"], corruptions, severities))
        rows.append(row)
    set_columns = [corruption_column(*ns) for ns in sets]
    results = {
        "task": task,
        "columns": [BENIGN, *(column_name(a, e) for a in attacks for e in eps), *set_columns,
                    *((MPC, RPC) if sets else ())],  # fmt: skip
        "rows": rows,
        "delta": delta(rows),
        "corruptions": {"names": corruptions, "severities": severities, "columns": set_columns},
        "settings": settings,
        "save_dir": str(save_dir),
    }
    results["markdown"] = write_table(results, save_dir)
    LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}")  # the table is the caller's to print, once
    return results


def check_tasks(tasks: dict, save_json: bool, save_adv: bool) -> str:
    """Return the task of the models to validate (`{role: task}`), refusing mixed or unsupported tasks and detection-only
    outputs for other tasks, before any work."""
    task = tasks["model"]
    if task not in VALIDATORS:
        raise ValueError(f"model is a {task} model: val_advamd validates {', '.join(VALIDATORS)} models")
    for role in ("baseline", "attack_model"):
        if tasks.get(role, task) != task:
            raise ValueError(f"{role} is a {tasks[role]} model and model a {task} one: use models of one task")
    if task != "detect" and (save_json or save_adv):
        raise ValueError(f"save_json and save_adv write detection formats (COCO boxes, YOLO box labels): leave them "
                         f"off for a {task} model")  # fmt: skip
    return task


def build_attacks(attacks: list[str], eps: list[float], norm, steps, step_size, random_start, deepfool, seed) -> dict:
    """Return a fresh attack per attack × ε, keyed by table column, resolved by `attack_settings` (its defaults).

    FGSM is one step of size ε: `steps` and `step_size` apply to the iterative attacks (PGD, DeepFool) only, and
    `deepfool` to DeepFool only.
    """
    out = {}
    for a in attacks:
        own = {"steps": steps, "step_size": step_size} if a != "fgsm" else {}
        if a == "deepfool":
            own["deepfool"] = deepfool
        for e in eps:
            settings = attack_settings(a, e, norm, random_start=random_start, key="attacks", **own)
            out[column_name(a, e)] = build_attack(settings.pop("attack"), **settings, seed=seed)
    return out


def delta(rows: list[dict]) -> dict | None:
    """Return model − baseline for every column and statistic, or None without a baseline."""
    if len(rows) < 2:
        return None
    model, base = rows
    return {
        column: {k: v - base["stats"][column][k] for k, v in stats.items() if k in base["stats"][column]}
        for column, stats in model["stats"].items()
    }


def table_rows(results: dict, metric: str, columns: list[str] | None = None) -> list[list[str]]:
    """Return one metric's table (header first) over `columns` (all when None): rows for the model, the baseline
    and Δ, values in percent."""
    key, nan = TABLE_METRICS[results.get("task", "detect")][metric], float("nan")
    columns = columns or results["columns"]
    header = ["model", "attacked model", *columns]
    lines = [header]
    for row in results["rows"]:
        values = (f"{100 * row['stats'][c].get(key, nan):.2f}" for c in columns)
        lines.append([row_label(row), row["attacked_by"], *values])
    if results["delta"]:
        diff = results["delta"]
        lines.append([delta_label(results), "", *(f"{100 * diff[c].get(key, nan):+.2f}" for c in columns)])
    return lines


def row_label(row: dict) -> str:
    """Return a results row's name in the tables: the model's, or `baseline: <name>`."""
    return row["name"] if row["role"] == "model" else f"baseline: {row['name']}"


def delta_label(results: dict) -> str:
    """Return the name of the Δ row: `Δ (<model> − <baseline>)`."""
    model, base = (r["name"] for r in results["rows"])
    return f"Δ ({model} − {base})"


def write_table(results: dict, save_dir: str | Path) -> str:
    """Write the results as `results.csv`, `results.json` and `results.md` in `save_dir`; return the Markdown.

    The tables follow the paper's Table 1: one column per attack × ε after the benign one, one row per model (and
    baseline) naming the model the attacks were computed on, and the Δ row (model − baseline). Values in % for the
    task (`TABLE_METRICS`): detection mAP50-95 and mAP50 (and with `save_json` the pycocotools AP50-95 and AP50),
    segmentation mask and box mAP, classification top-1 and top-5 accuracy. With corruptions the tables end with
    mPC and rPC, and the task's score (the first metric) follows per corruption × severity, also drawn in
    `corruptions.png`. The CSV holds the same tables with a `metric` column and every corrupted set's column; the
    JSON holds every statistic of every run as fractions.

    Args:
        results (dict): The output of `validate_advamd` (without `markdown`).
        save_dir (str | Path): The run directory.

    Returns:
        (str): The Markdown tables.
    """
    save_dir = Path(save_dir)
    first = results["rows"][0]["stats"][BENIGN]
    metrics = [m for m, key in TABLE_METRICS[results.get("task", "detect")].items() if key in first]
    blocks, records = [], []
    sets = results.get("corruptions", {}).get("columns") or []
    for metric in metrics:
        lines = table_rows(results, metric, [c for c in results["columns"] if c not in sets])
        blocks.append(f"**{metric} (%)**\n\n" + markdown_table(lines))
        records += [[metric, *line] for line in table_rows(results, metric)[1:]]
    with open(save_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["metric", *table_rows(results, metrics[0])[0]], *records])
    if sets:
        blocks += corruption_blocks(results, metrics[0], save_dir / "corruptions.png")
    (save_dir / "results.json").write_text(
        json.dumps({k: v for k, v in results.items() if k != "markdown"}, indent=2, default=str)
    )
    markdown = "\n\n".join(blocks) + "\n"
    (save_dir / "results.md").write_text(markdown, encoding="utf-8")
    return markdown


def markdown_table(lines: list[list[str]]) -> str:
    """Return rows (header first) as a Markdown table."""
    md = ["| " + " | ".join(line) + " |" for line in lines]
    md.insert(1, "|" + "---|" * len(lines[0]))
    return "\n".join(md)


def corruption_blocks(results: dict, metric: str, plot_file: Path) -> list[str]:
    """Return the Markdown tables of the task's score per corruption × severity (per model, and Δ with a baseline)
    and draw them as heatmaps into `plot_file`."""
    key, c = TABLE_METRICS[results["task"]][metric], results["corruptions"]
    names, severities = c["names"], c["severities"]
    grids = {row_label(row): grid(row["stats"], names, severities, key) for row in results["rows"]}
    if results["delta"]:
        grids[delta_label(results)] = grid(results["delta"], names, severities, key)
    blocks = [mpc_note(names, severities)]
    for title, values in grids.items():
        sign = "+" if title.startswith("Δ") else ""
        lines = [["corruption", *(f"s{s}" for s in severities), "mean"]]
        lines += [[n, *(f"{100 * v:{sign}.2f}" for v in (*r, r.mean()))] for n, r in zip(names, values)]
        blocks.append(f"**{metric} (%) per corruption × severity: {title}**\n\n" + markdown_table(lines))
    plot_corruptions(grids, names, severities, f"{metric} (%)", plot_file)
    return blocks
