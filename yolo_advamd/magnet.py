"""MagNet (Meng and Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017): its training and
its threshold.

`method=magnet` trains a denoising autoencoder (`nn.autoencoder.Autoencoder`) on the benign training images of the
model's dataset with Ultralytics' own training loop (`MagNetMixin` on the task's trainer: run directory, results.csv,
resume, DDP, EMA), leaving the model's weights untouched. Each validation sets the detector's threshold on benign val
(`MagNetValidator`, `fit_threshold`); the final one sets it again on the saved (fp16) weights, so the checkpoint's
threshold holds for the autoencoder as it is loaded. At use (`val_advamd.py defense=`) an image whose reconstruction
error is above the threshold is rejected, and the model sees the reconstruction of the others (the reformer).

What we took from the reference (Trevillie/MagNet): autoencoder I (`Autoencoder`), Gaussian training noise 0.1, the
error exponent 2 of its detector I, Adam at 1e-3 and the MSE loss (`hyps/magnet.yaml`), and the threshold rule of
`Operator.get_thrs` with one fix: it rejects at most `fpr` of the calibration set, also when `fpr` times its size is
below one (the reference then rejects every image).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import distributed as dist
from ultralytics.data import ClassificationDataset, build_yolo_dataset
from ultralytics.data.utils import get_split_fraction
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.engine.validator import BaseValidator
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import strip_optimizer, torch_load

from yolo_advamd.cfg import ADVAMD_KEYS, Settings
from yolo_advamd.nn.autoencoder import Autoencoder, reconstruction_error
from yolo_advamd.tasks import TASKS
from yolo_advamd.trainer import AdvAmdMixin


def fit_threshold(errors: torch.Tensor, fpr: float) -> float:
    """Return the smallest threshold that rejects at most a fraction `fpr` of images with these benign errors.

    An image is rejected when its error is above the threshold: the threshold is the (k+1)-th largest error,
    k = floor(fpr * n), so at most k images of the calibration set are above it (fewer with ties).

    Args:
        errors (torch.Tensor): Reconstruction errors of the benign calibration images (n,).
        fpr (float): The false-rejection rate allowed on them, in (0, 1).
    """
    k = math.floor(fpr * len(errors))
    return float(errors.sort(descending=True).values[min(k, len(errors) - 1)])


def image_batch(batch: dict, device: torch.device) -> torch.Tensor:
    """Return a loader batch's images as float in [0, 1] on `device` (detection loaders give uint8 0-255)."""
    img = batch["img"].to(device)
    return img.float() / 255 if img.dtype == torch.uint8 else img.float()


@torch.no_grad()
def benign_errors(autoencoder: Autoencoder, loader, device: torch.device) -> torch.Tensor:
    """Return the reconstruction error of every image of `loader` (the calibration set), in loader order."""
    autoencoder.eval()
    return torch.cat([autoencoder.errors(image_batch(b, device)).cpu() for b in loader])


def calibrate_checkpoint(file: Path, loader, fpr: float, device: torch.device) -> float:
    """Strip a finished run's checkpoint as Ultralytics does, then set its autoencoder's threshold on `loader`'s images
    as the weights are saved (fp16, used in fp32); return the threshold."""
    strip_optimizer(file)
    ckpt = torch_load(file, map_location="cpu")
    autoencoder = ckpt["model"]
    errors = benign_errors(autoencoder.float().to(device), loader, device)
    autoencoder.threshold = fit_threshold(errors, fpr)
    ckpt["model"] = autoencoder.cpu().half()
    torch.save(ckpt, file)
    rejected = int((errors > autoencoder.threshold).sum())
    LOGGER.info(
        f"MagNet {file.name}: threshold {autoencoder.threshold:.6g} rejects {rejected}/{len(errors)} benign val "
        f"images (magnet_fpr={fpr})"
    )
    return autoencoder.threshold


class MagNetValidator(BaseValidator):
    """Ultralytics' validation loop for the autoencoder: the val reconstruction loss, the threshold for `magnet_fpr`
    (`metrics/threshold`) and the benign val rejection rate it gives (`metrics/rejected`); fitness is minus the val
    mean squared error."""

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, fpr: float = 0.005):
        """Initialize as Ultralytics' validators are; `fpr` is the false-rejection rate the threshold allows."""
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.metrics = SimpleNamespace(keys=["metrics/threshold", "metrics/rejected"])  # its results.csv columns
        self.errors, self.squared, self.fpr, self.p = [], [], fpr, 2

    def preprocess(self, batch: dict) -> dict:
        """Move the images to the device as float in [0, 1]."""
        return {**batch, "img": image_batch(batch, self.device)}

    def init_metrics(self, model) -> None:
        """Start a new pass: no errors yet; the error's exponent is the model's."""
        self.errors, self.squared, self.p = [], [], model.p

    def update_metrics(self, preds: torch.Tensor, batch: dict) -> None:
        """Record each image's detector error and squared error."""
        errors = reconstruction_error(batch["img"], preds, self.p)
        self.errors.append(errors.cpu())
        self.squared.append((errors if self.p == 2 else reconstruction_error(batch["img"], preds, 2)).cpu())

    def gather_stats(self) -> None:
        """Gather every DDP rank's errors on rank 0, which sets the threshold."""
        if RANK == -1:
            return
        gathered = [None] * dist.get_world_size() if RANK == 0 else None
        dist.gather_object((self.errors, self.squared), gathered, dst=0)
        if RANK == 0:
            self.errors = [e for errors, _ in gathered for e in errors]
            self.squared = [e for _, squared in gathered for e in squared]

    def get_stats(self) -> dict:
        """Return the threshold, the benign rejection rate at it and the fitness."""
        errors = torch.cat(self.errors)
        threshold = fit_threshold(errors, self.fpr)
        rejected = float((errors > threshold).float().mean())
        fitness = -float(torch.cat(self.squared).mean())
        return {"metrics/threshold": threshold, "metrics/rejected": rejected, "fitness": fitness}

    def get_desc(self) -> str:
        """Return the progress bar's title."""
        return "MagNet: reconstruction errors on benign val"


class MagNetMixin(AdvAmdMixin):
    """Train MagNet's autoencoder with the task's Ultralytics trainer (its datasets, loop, checkpoints and resume).

    The settings are resolved and checked as for every method (`AdvAmdMixin`); the model the run starts from
    (`model=`, a `.pt`) is not trained nor changed: it only names the model the autoencoder defends and, unless
    `imgsz=` is given, the image size. The training images are the dataset's, not augmented (the reference trains on
    the images as they are); the autoencoder adds its own noise (`Autoencoder.loss`).
    """

    def trainer_overrides(self, settings: Settings) -> dict:
        """Return the user's settings, `imgsz` the model's training size unless given: the defense sees its images."""
        opened, given = settings.opened, settings.overrides
        if "imgsz" in given or given.get("resume") or opened is None:
            return given
        return {**given, "imgsz": opened.ckpt.get("train_args", {}).get("imgsz", DEFAULT_CFG.imgsz)}

    def setup_model(self):
        """Build a new autoencoder, or take the interrupted run's (resume); return the checkpoint to resume."""
        if self.resume:
            self.model = self.settings.opened.model.requires_grad_(True)  # saved as an EMA, frozen
            return self.settings.opened.ckpt
        self.model = self.get_model()
        return None

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> Autoencoder:
        """Return a new autoencoder for the dataset's images, recording the model it defends."""
        a = self.args
        model = Autoencoder(self.data.get("channels", 3), noise=a.magnet_noise, p=a.magnet_p, task=self.settings.task)
        model.fit_for, model.fpr, model.imgsz = str(self.settings.opened.path), a.magnet_fpr, a.imgsz
        if verbose:
            n = sum(p.numel() for p in model.parameters())
            LOGGER.info(
                f"MagNet: an autoencoder of {n} parameters for {model.fit_for}; the model's weights stay as they are"
            )
        return model

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """Return the dataset of `img_path` without augmentation (the reference trains on the images as they are),
        letterboxed or cropped as the task's validator does: the images `val_advamd.py` will screen. The split's
        `fraction` applies as in Ultralytics."""
        split = "train" if mode == "train" else self.args.split
        if TASKS[self.settings.task].classifier:
            return ClassificationDataset(img_path, self.args, augment=False, prefix=split, names=self.data["names"])
        fraction = get_split_fraction(self.args.fraction, split)
        return build_yolo_dataset(
            self.args, img_path, batch, self.data, mode="val", stride=self.stride, fraction=fraction
        )

    def _build_train_pipeline(self) -> None:
        """Build the loaders and the optimizer as `BaseTrainer` does (a detector's trainer also sets its head's
        `max_det`, which the autoencoder has not)."""
        BaseTrainer._build_train_pipeline(self)

    def get_validator(self) -> MagNetValidator:
        """Return the validator that sets the threshold on benign val (given the Ultralytics settings only)."""
        args = {k: v for k, v in vars(self.args).items() if k not in ADVAMD_KEYS}
        return MagNetValidator(self.test_loader, self.save_dir, args, self.callbacks, fpr=self.args.magnet_fpr)

    def plot_training_samples(self, batch: dict, ni: int) -> None:
        """Plot nothing: the images are the dataset's, unchanged."""

    def final_eval(self) -> None:
        """Strip the saved checkpoints and set their thresholds on all of benign val (not a DDP rank's share) at the
        precision they are saved in."""
        if RANK not in {-1, 0}:
            return
        loader = self.get_dataloader(self.data[self.args.split], self.test_loader.batch_size, rank=-1, mode="val")
        for file in dict.fromkeys((self.last, self.best)):
            if file.exists():
                calibrate_checkpoint(file, loader, self.args.magnet_fpr, self.device)


class MagNetDetectionTrainer(MagNetMixin, TASKS["detect"].trainer):
    """MagNet's autoencoder on a detection dataset's images (`DetectionTrainer`'s data)."""

    task_name = "detect"


class MagNetSegmentationTrainer(MagNetMixin, TASKS["segment"].trainer):
    """MagNet's autoencoder on a segmentation dataset's images (`SegmentationTrainer`'s data)."""

    task_name = "segment"


class MagNetClassificationTrainer(MagNetMixin, TASKS["classify"].trainer):
    """MagNet's autoencoder on a classification dataset's images (`ClassificationTrainer`'s data)."""

    task_name = "classify"


TRAINERS = {t.task_name: t for t in (MagNetDetectionTrainer, MagNetSegmentationTrainer, MagNetClassificationTrainer)}
