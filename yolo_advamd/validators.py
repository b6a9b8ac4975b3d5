"""Ultralytics' validators on adversarial images, one per task (`VALIDATORS`: detection, segmentation, classification).

Each runs the task's own Ultralytics validator (dataloader, letterbox or crop, NMS, matching, metrics) through a
subclass whose `preprocess` replaces each batch's images by their adversarial version (`AdversarialValidation`),
attacked white-box on the device against an fp32, eval-mode copy of the model under test (or, in the transfer setting,
of another model), with the model's own loss on the ground truth as the objective (for segmentation the full seg loss,
for classification the cross-entropy), or with `attack_labels=pred` on the attacked model's own predictions
(`attacks.targets`); scores stay on the ground truth. With `images` a validator scores a corrupted copy of the split.
The detection validator adds COCO scoring with pycocotools (`coco_scoring`) and an adversarial copy of the val set.

Examples:
    >>> v = VALIDATORS["detect"](args=dict(data="coco.yaml"), attack=build_attack("fgsm", eps=0.01),
    ...                          attack_model=fp32_eval_model)
    >>> stats = v(model=model)
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import torch
import yaml
from torch import nn

from yolo_advamd.attacks.objectives import PreprocessedObjective, objective_for
from yolo_advamd.attacks.settings import check_attack_labels
from yolo_advamd.attacks.strategies import attack_batch
from yolo_advamd.attacks.targets import attack_targets
from yolo_advamd.coco_scoring import COCOScoring
from yolo_advamd.tasks import TASKS

REJECTED = "defense/rejected"  # the share of images the defense's detector rejected (MagNet), beside the scores


class AdversarialValidation:
    """An Ultralytics validator on adversarial images: each batch is attacked white-box before inference.

    With `attack=None` it is the task's stock validator (benign images). Mixed in before the task's validator class.
    With `images` it scores that folder (a corrupted copy of the split, same layout and labels) instead of the split.
    With `defense` (MagNet's autoencoder) each image, once attacked, is rejected when its reconstruction error is above
    the defense's threshold (no detection: its objects are missed; a classifier's answer is wrong) and the model sees
    its reconstruction otherwise; the share rejected is the statistic `REJECTED`.

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
        defense (nn.Module | None): MagNet's frozen autoencoder (`checkpoint.load_defense`), or None.
        defense_adaptive (bool): Attack the model through the defense's reformer (the attack sees the
            reconstruction) instead of the model alone.

    Examples:
        >>> v = AdvDetectionValidator(args=dict(data="coco.yaml"), attack=build_attack("fgsm", eps=0.01),
        ...                           attack_model=fp32_eval_model)
        >>> stats = v(model=model)
    """

    def __init__(
        self,
        dataloader=None,
        save_dir=None,
        args=None,
        _callbacks=None,
        attack=None,
        attack_model: nn.Module | None = None,
        terms: str = "all",
        attack_labels: str = "gt",
        attack_conf: float = 0.25,
        images: Path | None = None,
        defense: nn.Module | None = None,
        defense_adaptive: bool = False,
    ):
        """Initialize the validator; see the class attributes for the AdvAmd arguments."""
        super().__init__(dataloader, save_dir, args, _callbacks)
        if attack is not None and attack_model is None:
            raise ValueError("an attack needs attack_model=: the fp32 eval-mode model whose gradients it follows")
        self.attack, self.attack_model, self.terms, self.images = attack, attack_model, terms, images
        self.attack_labels, self.attack_conf = check_attack_labels(attack_labels, attack_conf), attack_conf
        self.defense, self.defense_adaptive = defense, defense_adaptive
        self.rejected = self.screened = 0  # images the defense rejected, of those it saw

    def get_dataloader(self, dataset_path, batch_size: int):
        """Return Ultralytics' val dataloader, on `images` instead of the split's when given."""
        return super().get_dataloader(str(self.images) if self.images else dataset_path, batch_size)

    def preprocess(self, batch: dict) -> dict:
        """Preprocess like Ultralytics, then replace `img` by its adversarial version and, with a defense, by its
        reconstruction (`rejected` marks the images its detector rejects)."""
        batch = super().preprocess(batch)
        defense = None if self.defense is None else self.defense.to(batch["img"].device)
        if self.attack is not None:
            batch["img"] = self.adversarial(batch).to(batch["img"].dtype)
        if defense is not None:
            reconstruction, errors = defense.screen(batch["img"].float())
            batch["rejected"] = errors > defense.threshold
            batch["img"] = reconstruction.to(batch["img"].dtype)
            self.rejected += int(batch["rejected"].sum())
            self.screened += len(errors)
        return batch

    def update_metrics(self, preds: list[dict], batch: dict) -> None:
        """Score the batch like Ultralytics, a rejected image with no detection: its objects are missed."""
        if (rejected := batch.get("rejected")) is not None:
            preds = [{k: v[:0] for k, v in p.items()} if r else p for p, r in zip(preds, rejected.tolist())]
        super().update_metrics(preds, batch)

    def get_stats(self) -> dict:
        """Return Ultralytics' statistics and, with a defense, the share of images it rejected (`REJECTED`)."""
        stats = super().get_stats()
        if self.defense is not None:
            stats[REJECTED] = self.rejected / max(self.screened, 1)
        return stats

    def adversarial(self, batch: dict) -> torch.Tensor:
        """Return the batch's images attacked against `attack_model` (float32, in the attack's clip range).

        The validator runs under `torch.inference_mode`, whose tensors cannot enter autograd: the batch is cloned
        into normal tensors with inference mode off and gradients on, and the attack runs in fp32 even when the
        validated model runs in fp16.
        """
        with torch.inference_mode(False), torch.enable_grad():
            clean = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            clean["img"] = clean["img"].float()
            targets = self.attack_targets_of(clean)
            if self.defense_adaptive:  # the loss of the model on the reconstruction, differentiated through it
                objective = PreprocessedObjective(objective_for(self.attack_model, targets, self.terms), self.defense)
                result = self.attack(clean["img"], objective)
            else:
                result, _ = attack_batch(self.attack, self.attack_model, targets, self.terms)
            return (clean["img"] + result.delta.detach()).clamp_(*self.attack.clip)

    def attack_targets_of(self, batch: dict) -> dict:
        """Return the batch the attack takes its targets from: `batch` (ground truth) or the attacked model's
        predictions on its images (`attack_labels`)."""
        return attack_targets(self.attack_model, batch, self.attack_labels, self.attack_conf)


class AdvSegmentationValidator(AdversarialValidation, TASKS["segment"].validator):
    """Ultralytics' SegmentationValidator (mask and box mAP) on adversarial images, attacked on the full seg loss."""

    task_name = "segment"


class AdvClassificationValidator(AdversarialValidation, TASKS["classify"].validator):
    """Ultralytics' ClassificationValidator (top-1, top-5) on adversarial images, attacked on the cross-entropy."""

    task_name = "classify"

    def update_metrics(self, preds: torch.Tensor, batch: dict) -> None:
        """Score the batch like Ultralytics, a rejected image with no class: wrong at top-1 and top-5."""
        rejected = batch.get("rejected")
        super().update_metrics(preds, {**batch, "rejected": None})
        if rejected is not None:
            self.pred[-1][rejected.cpu()] = -1


class AdvDetectionValidator(AdversarialValidation, COCOScoring, TASKS["detect"].validator):
    """Ultralytics' DetectionValidator on adversarial images, with COCO JSON scored by pycocotools (`COCOScoring`)
    and an optional adversarial copy of the val set.

    Attributes:
        adv_dir (Path | None): Where adversarial images and labels are written in YOLO layout (`images/`, `labels/`).
    """

    task_name = "detect"

    def __init__(self, *args, adv_dir: str | Path | None = None, **kwargs):
        """Initialize the validator; `adv_dir` as the class attribute, the rest as `AdversarialValidation`."""
        super().__init__(*args, **kwargs)
        self.adv_dir = None if adv_dir is None else Path(adv_dir)
        self.adv_root = None  # common folder of the val images, for flat names of the saved copies

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
                + yaml.safe_dump(
                    {
                        "path": str(self.adv_dir.resolve()),
                        "train": "images",
                        "val": "images",
                        "names": {int(k): str(v) for k, v in model.names.items()},
                    },
                    sort_keys=False,
                )
            )


VALIDATORS = {v.task_name: v for v in (AdvDetectionValidator, AdvSegmentationValidator, AdvClassificationValidator)}
