"""What an attack maximizes: a detector's own Ultralytics loss on its ground-truth targets, or a classifier's CE.

An objective is built per batch and gives an attack three things about images x: `loss(x)`, the scalar to maximize
(paper eq. 4); `object_logits(x)`, class logits per ground-truth object, for DeepFool and for flip statistics; and
`frozen()`, the context in which the attacked model may be run without any side effect on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss, v8SegmentationLoss
from ultralytics.utils.tal import make_anchors

TERMS = {"all": "box + cls + dfl", "cls": "the classification term", "box": "the localization terms, box + dfl"}
ATTACK_TERMS = (*TERMS, "max")  # max: the cls and the box attack, per image the one with the larger detection loss


def check_terms(terms: str, classifier: bool = False) -> None:
    """Refuse an `attack_terms` value that is not one, or that has no meaning for a classifier (no boxes)."""
    if terms not in ATTACK_TERMS:
        raise ValueError(f"attack_terms={terms} is not valid: choose one of {', '.join(ATTACK_TERMS)}")
    if classifier and terms not in {"all", "cls"}:
        raise ValueError(f"attack_terms={terms} has no meaning for a classifier (no boxes): use attack_terms=all")


SEGMENT_TERMS = {  # the segmentation loss's items in each part (`v8SegmentationLoss.loss_names`)
    "all": {"box_loss", "seg_loss", "cls_loss", "dfl_loss", "sem_loss"},
    "cls": {"cls_loss"},
    "box": {"box_loss", "dfl_loss"},
}


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` for an attack without changing it: input gradients only, no BN statistics updates.

    Inside, every parameter has `requires_grad=False` (no weight gradient is computed or accumulated in `.grad`) and
    every BatchNorm in train mode has `track_running_stats=False`, so it normalizes with batch statistics exactly as
    before but leaves `running_mean`, `running_var` and `num_batches_tracked` untouched. Train/eval modes are kept.
    On exit, even after an exception, the `requires_grad` and `track_running_stats` flags are restored.

    Args:
        model (nn.Module): The attacked model, in train or eval mode.

    Yields:
        (nn.Module): `model`.
    """
    params = list(model.parameters())
    grad_flags = [p.requires_grad for p in params]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    track_flags = [bn.track_running_stats for bn in bns]
    try:
        for p in params:
            p.requires_grad_(False)
        for bn in bns:
            bn.track_running_stats = False
        yield model
    finally:
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        for bn, flag in zip(bns, track_flags):
            bn.track_running_stats = flag


class Objective:
    """What an attack maximizes: `loss_and_logits(x)`, implemented by each objective, and what derives from it.

    Attributes:
        model (nn.Module): The attacked model.
        labels (torch.Tensor): (n_obj,) long, the true class of each object.
        batch_idx (torch.Tensor): (n_obj,) long, the image of each object.
    """

    def frozen(self) -> contextlib.AbstractContextManager:
        """Return the context in which the model runs without side effects (see `frozen`)."""
        return frozen(self.model)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss at `images`, to be maximized."""
        return self.loss_and_logits(images)[0]

    def object_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Return the class logits (n_obj, nc) of each object at `images`."""
        return self.loss_and_logits(images)[1]

    def loss_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the loss and the per-object class logits at `images` from one forward pass (each objective's own)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_and_logits(images)")


class DetectionObjective(Objective):
    """The detection loss of an Ultralytics detector on one batch's ground truth, as a function of the images.

    `loss(x)` is the model's own training loss, `criterion(model(x), batch)` summed over its box, cls and dfl terms
    with the hyperparameter gains (what the trainer minimizes, paper eq. 4), or only its classification term with
    `terms="cls"`, or only its localization terms (box + dfl) with `terms="box"`. For an end-to-end head (`E2ELoss`,
    e.g. yolo26) both branches count with their current weights.

    Targets are assigned to anchors once, at the clean images `batch["img"]`, and kept for every other x: the loss
    is L(F(x), y) with y the ground truth as the criterion's `TaskAlignedAssigner` places it on the clean images, so
    `loss(batch["img"])` equals `model.loss(batch)[0].sum()` exactly. The stock loss re-assigns at each input from
    detached predictions, which makes it a discontinuous function of x that its own input gradient does not climb
    (on an untrained yolov8n a 1e-5 step along the gradient lowers it by 0.1 while the gradient promises +0.01); with
    the assignment fixed it is smooth and the gradient is exact. The first call at other images costs one extra
    no-grad forward pass at the clean images.

    `object_logits(x)` gives each ground-truth object the mean class logits over the anchors assigned to it (the
    same anchors at every x, so clean and attacked logits compare like with like). An object left without anchors
    (the assigner gives an anchor claimed by several boxes to the one its prediction overlaps most, so a duplicate
    box can lose all of its anchors) takes the logits of the finest-level anchor whose cell holds its box center.
    End-to-end heads use the one-to-many branch: its input gradients exist in train mode too (Ultralytics detaches
    the one-to-one branch's features in training).

    The model is run as it is (train mode: batch statistics, eval mode: running statistics); call the methods inside
    `frozen()`, which every `Attack` does.

    Attributes:
        model (nn.Module): The attacked detector.
        batch (dict): The batch whose `cls`, `bboxes`, `batch_idx` are the targets.
        terms (str): "all", "cls" or "box".
        labels (torch.Tensor): (n_obj,) long, the true class of each ground-truth object, in batch order.
        batch_idx (torch.Tensor): (n_obj,) long, the image of each ground-truth object.

    Examples:
        >>> objective = DetectionObjective(model, batch)  # batch from DetectionTrainer.preprocess_batch
        >>> with objective.frozen():
        ...     loss, logits = objective.loss_and_logits(batch["img"])
    """

    def __init__(self, model: nn.Module, batch: dict, terms: str = "all"):
        """Bind `model` and the targets of `batch`, building the model's criterion if it has none yet.

        Args:
            model (nn.Module): An Ultralytics `DetectionModel` (float32 weights, `args` a namespace with box/cls/dfl).
            batch (dict): A preprocessed batch on the model's device: `img` (B, 3, H, W) in [0, 1], `cls` (n, 1),
                `bboxes` (n, 4) normalized xywh, `batch_idx` (n,) sorted as Ultralytics' collate function makes it.
            terms (str): "all" (box + cls + dfl), "cls" (the classification term) or "box" (box + dfl).
        """
        if terms not in TERMS:
            raise ValueError(
                f"terms={terms!r} is not valid: choose {', '.join(f'{k} ({v})' for k, v in TERMS.items())}"
            )
        if isinstance(getattr(model, "args", None), dict):
            raise TypeError(
                "model.args is a dict (as loaded from a checkpoint): the Ultralytics criterion needs a namespace, "
                "set model.args = ultralytics.cfg.get_cfg(overrides=model.args) before attacking"
            )
        dtype = next(model.parameters()).dtype
        if dtype != torch.float32:
            raise TypeError(f"model weights are {dtype}: call model.float() before attacking (checkpoints store fp16)")
        batch_idx = batch["batch_idx"].view(-1).long()
        if batch_idx.numel() > 1 and bool((batch_idx[1:] < batch_idx[:-1]).any()):
            raise ValueError("batch['batch_idx'] is not sorted: order objects by image as Ultralytics' collate_fn does")
        if getattr(model, "criterion", None) is None:
            model.criterion = model.init_criterion()  # as DetectionModel.loss does
        criterion = getattr(model.criterion, "criterion", model.criterion)  # a trainer's wrapper holds the criterion
        if isinstance(criterion, E2ELoss):
            self.branches = (
                ("one2many", criterion.one2many, criterion.o2m),
                ("one2one", criterion.one2one, criterion.o2o),
            )
        elif isinstance(criterion, v8DetectionLoss):
            self.branches = ((None, criterion, 1.0),)
        else:
            raise TypeError(
                f"{type(criterion).__name__} is not a detection criterion: expected v8DetectionLoss or E2ELoss"
            )
        self.assigners = [_AssignOnce(criterion.assigner) for _, criterion, _ in self.branches]
        self.segment = isinstance(criterion, v8SegmentationLoss) and "masks" in batch  # the mask term needs masks
        self.model = model
        self.batch = batch
        self.terms = terms
        with torch.inference_mode(False):  # normal tensors, usable by autograd even for a validator's batch
            self.labels = batch["cls"].view(-1).long().clone()
            self.batch_idx = batch_idx.clone()
            counts = torch.bincount(self.batch_idx, minlength=batch["img"].shape[0])
            self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # index of each image's first object
            self.centers = batch["bboxes"][:, :2].float().clone()

    def loss_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the loss and the per-object class logits at `images` from a single forward pass.

        The first call at images other than `batch["img"]` runs a no-grad pass at `batch["img"]` first, to assign
        the targets there.

        Args:
            images (torch.Tensor): (B, 3, H, W) images in [0, 1], usually requiring grad.

        Returns:
            loss (torch.Tensor): Scalar, the criterion's loss vector (gains applied, times batch size) summed over
                the chosen terms.
            logits (torch.Tensor): (n_obj, nc) float32 class logits per object, differentiable w.r.t. `images`.
        """
        parts, logits = self.loss_parts(images)
        return parts[self.terms], logits

    def loss_parts(self, images: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Return every part of the loss (`all`, `cls`, `box`, see `TERMS`) and the per-object logits at `images`, from
        a single forward pass (so attacks on different parts can share it); the assignment as in `loss_and_logits`."""
        if self.assigners[0].result is None and not torch.equal(images.detach(), self.batch["img"]):
            with torch.no_grad():
                self._evaluate(self.batch["img"])  # assign the targets at the clean images
        return self._evaluate(images)

    def _evaluate(self, images: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Run the model and its criterion at `images` with the fixed assignment (made now on the first call)."""
        preds = self.model(images)
        preds = preds[1] if isinstance(preds, tuple) else preds  # eval mode: (decoded, raw dict)
        loss, logits = dict.fromkeys(TERMS, 0.0), None
        for (key, criterion, weight), assigner in zip(self.branches, self.assigners):
            p = preds[key] if key else preds
            stock, criterion.assigner = criterion.assigner, assigner
            try:
                if self.segment:  # the full segmentation loss, box, seg, cls, dfl, sem, times the batch size
                    vector, _ = criterion.loss(p, self.batch)
                    fg_mask, gt_idx = assigner.result[3], assigner.result[4]
                    parts = {
                        t: sum(v for n, v in zip(criterion.loss_names, vector) if n in names)
                        for t, names in SEGMENT_TERMS.items()
                    }
                else:
                    (fg_mask, gt_idx, *_), terms, _ = criterion.get_assigned_targets_and_loss(p, self.batch)
                    parts = {
                        t: v * images.shape[0]
                        for t, v in {"all": terms.sum(), "cls": terms[1], "box": terms[0] + terms[2]}.items()
                    }
            finally:
                criterion.assigner = stock
            loss = {t: loss[t] + weight * parts[t] for t in TERMS}
            if logits is None:
                logits = self._mean_assigned(p, fg_mask, gt_idx)
        return loss, logits

    @torch.no_grad()
    def image_losses(self, images: torch.Tensor) -> torch.Tensor:
        """Return each image's detection loss at `images` (box + cls + dfl with the gains), at the fixed assignment.

        Image i's loss is what the criterion gives a batch of that image alone, with the anchors assigned at the clean
        images (this objective's assignment, the one the attacks climbed): the classification BCE and the criterion's
        own `bbox_loss` (CIoU and DFL) of its anchors, normalized by its own sum of target scores. At the clean images
        it equals the stock loss of that image alone. One forward pass of the batch, so images attacked in different
        ways compare like with like; a segmentation model is scored on its detection terms. Call it inside
        `frozen()`, after the assignment was made (any call of `loss_and_logits`).

        Args:
            images (torch.Tensor): (B, 3, H, W) versions of the batch's images.

        Returns:
            (torch.Tensor): (B,) float32 losses.
        """
        preds = self.model(images)
        preds = preds[1] if isinstance(preds, tuple) else preds
        losses = images.new_zeros(images.shape[0], dtype=torch.float32)
        for (key, c, weight), assigner in zip(self.branches, self.assigners):
            p = preds[key] if key else preds
            _, target_bboxes, target_scores, fg_mask, _ = assigner.result
            distri, scores = p["boxes"].permute(0, 2, 1).float(), p["scores"].permute(0, 2, 1).float()
            anchors, strides = make_anchors(p["feats"], c.stride, 0.5)
            bboxes = c.bbox_decode(anchors, distri)
            imgsz = torch.tensor(p["feats"][0].shape[2:], device=images.device, dtype=distri.dtype) * c.stride[0]
            norm = target_scores.sum((1, 2)).clamp(min=1)  # each image's own normalization
            cls = c.bce(scores, target_scores.to(scores.dtype)).sum((1, 2)) / norm * c.hyp.cls
            for i in range(images.shape[0]):
                box, dfl = c.bbox_loss(
                    distri[i : i + 1],
                    bboxes[i : i + 1],
                    anchors,
                    target_bboxes[i : i + 1] / strides,
                    target_scores[i : i + 1],
                    norm[i],
                    fg_mask[i : i + 1],
                    imgsz,
                    strides,
                )
                losses[i] += weight * (box * c.hyp.box + cls[i] + dfl * c.hyp.dfl)
        return losses

    def _mean_assigned(self, preds: dict, fg_mask: torch.Tensor, gt_idx: torch.Tensor) -> torch.Tensor:
        """Average the class logits (B, nc, A) over each object's assigned anchors, with the center-cell fallback."""
        scores = preds["scores"].float()
        n, nc = self.labels.numel(), scores.shape[1]
        b, a = fg_mask.nonzero(as_tuple=True)
        obj = self.offsets[b] + gt_idx[b, a].long()  # flat object index (the assigner's index is float with no box)
        sums = scores.new_zeros(n, nc).index_add_(0, obj, scores[b, :, a])
        counts = scores.new_zeros(n).index_add_(0, obj, scores.new_ones(obj.numel()))
        h, w = preds["feats"][0].shape[2:]  # finest level, first in the anchor order
        cx = (self.centers[:, 0] * w).long().clamp_(0, w - 1)
        cy = (self.centers[:, 1] * h).long().clamp_(0, h - 1)
        center = scores[self.batch_idx, :, cy * w + cx]
        return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], center)


class _AssignOnce:
    """Stand in for a criterion's assigner: call it once, then return that first assignment on every call."""

    def __init__(self, assigner: nn.Module):
        """Wrap `assigner` (e.g. a `TaskAlignedAssigner`)."""
        self.assigner = assigner
        self.result = None

    def __call__(self, *args, **kwargs) -> tuple:
        """Return the first call's assignment."""
        if self.result is None:
            self.result = self.assigner(*args, **kwargs)
        return self.result


class PreprocessedObjective(Objective):
    """An objective on the model's preprocessed input, seen as a function of the original image's pixels.

    `loss(x) = objective.loss(preprocess(x))` with a differentiable `preprocess` (`images.letterbox` for detectors,
    `images.center_crop` for classifiers), so an attack on x perturbs the original pixels and its gradient flows
    through the resize, the padding or the crop.

    Attributes:
        objective (Objective): The objective at the model's input.
        preprocess (Callable): Original images (B, 3, H, W) -> the model's input.
    """

    def __init__(self, objective: Objective, preprocess):
        """Wrap `objective` (built on the preprocessed clean image) for images of the original size."""
        self.objective, self.preprocess = objective, preprocess
        self.labels, self.batch_idx = objective.labels, objective.batch_idx

    def frozen(self):
        """Return the wrapped objective's side-effect-free context."""
        return self.objective.frozen()

    def loss_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the objective's loss and per-object logits at the preprocessed `images`."""
        return self.objective.loss_and_logits(self.preprocess(images))


class VanishObjective(Objective):
    """Suppress every detection: minus the sum of the `topk` highest anchor scores (max class sigmoid per anchor).

    The attack maximizes it, pushing down the anchors that NMS would keep first, until none passes `conf`. It needs
    no targets; end-to-end heads (e.g. yolo26) count both branches. DeepFool has no class to flip here.

    Attributes:
        model (nn.Module): The attacked detector (fp32, any mode).
        topk (int): Number of anchors per image whose scores are pushed down (Ultralytics' `max_det` by default).
        labels (torch.Tensor): Empty: there are no objects to flip.
        batch_idx (torch.Tensor): Empty.
    """

    def __init__(self, model: nn.Module, topk: int = 300):
        """Bind `model` and the number of anchors per image to suppress."""
        self.model, self.topk = model, topk
        device = next(model.parameters()).device
        self.labels = self.batch_idx = torch.zeros(0, dtype=torch.long, device=device)

    def loss_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return minus the sum of the top anchor scores and empty (0, nc) per-object logits from one forward pass."""
        preds = self.model(images)
        preds = preds[1] if isinstance(preds, tuple) else preds  # eval mode: (decoded, raw dict)
        loss = 0.0
        for p in [preds[k] for k in ("one2many", "one2one") if k in preds] or [preds]:
            scores = p["scores"].float().sigmoid().amax(1)  # (B, anchors)
            loss = loss - scores.topk(min(self.topk, scores.shape[1]), dim=1).values.sum()
        return loss, scores.new_zeros(0, p["scores"].shape[1])


class ClassifierObjective(Objective):
    """The cross-entropy of an image classifier on true labels: the same interface as `DetectionObjective`.

    Each image is one object: `object_logits(x)` are the model's logits, `batch_idx` is `arange(B)`. The loss is the
    one Ultralytics' `v8ClassificationLoss` trains with (mean cross-entropy), so a training pass's input gradient is
    this objective's.

    Attributes:
        model (nn.Module): The attacked classifier, returning logits (B, nc).
        labels (torch.Tensor): (B,) long, the true classes.
        batch_idx (torch.Tensor): (B,) long, `arange(B)`.
    """

    def __init__(self, model: nn.Module, labels: torch.Tensor):
        """Bind `model` and the true `labels` (B,) of the batch to attack."""
        self.model = model
        with torch.inference_mode(False):  # normal tensors, usable by autograd
            self.labels = labels.view(-1).long().clone()
            self.batch_idx = torch.arange(self.labels.numel(), device=self.labels.device)

    def loss_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean cross-entropy and the logits at `images` from a single forward pass.

        An Ultralytics classifier in eval mode returns (probabilities, logits): the logits are used.
        """
        logits = self.model(images)
        logits = logits[1] if isinstance(logits, tuple) else logits
        return F.cross_entropy(logits.float(), self.labels), logits.float()


def objective_for(model: nn.Module, batch: dict, terms: str = "all") -> Objective:
    """Return what an attack on `batch` maximizes for the model's task: its training loss, or `terms` of it.

    A classifier (`ClassificationModel`) gives its cross-entropy on `batch["cls"]` (`terms` "all" or "cls"); a detector
    or segmentation model its detection loss (`DetectionObjective`; with the batch's masks, the segmentation loss).
    """
    from ultralytics.nn.tasks import ClassificationModel

    if isinstance(model, ClassificationModel):
        check_terms(terms, classifier=True)
        return ClassifierObjective(model, batch["cls"])
    return DetectionObjective(model, batch, terms=terms)
