"""AdvAmd trainers: Ultralytics' detection, segmentation and classification trainers with the AdvAmd attack stage,
auxiliary BN and three-view loss (`AdvAmdMixin`), one per task; `advamd_trainer` picks the one a model needs."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch
from torch import distributed as dist
from ultralytics.cfg import cfg2dict
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, TQDM
from ultralytics.utils.torch_utils import unwrap_model

from yolo_advamd.attacks import build_attack
from yolo_advamd.cfg import ADVAMD_KEYS, Settings, resolve_settings
from yolo_advamd.checkpoint import freeze_target
from yolo_advamd.loss import wrap_criterion
from yolo_advamd.nn.dual_bn import (
    convert_dual_bn,
    dual_bn_overhead,
    has_dual_bn,
    strip_aux_bn,
)
from yolo_advamd.plotting import plot_views, tensorboard_writer
from yolo_advamd.stage import AttackStage
from yolo_advamd.step import ViewGuard, advamd_step
from yolo_advamd.tasks import TASKS
from yolo_advamd.vulnerability import Vulnerability


class AdvAmdMixin:
    """Adversarial Amendment (paper Algorithm 1) for any Ultralytics task trainer, through its own training loop.

    Each step, `preprocess_batch` attacks the batch (`AttackStage`: the frozen target model M_T or the current model)
    and trains the mediate view (main BN) and the adversarial view (auxiliary BN, classification loss weighted by Ā),
    each forward and backward in turn; Ultralytics' loop then trains the benign view and steps the optimizer, so its
    optimizer, scheduler, EMA, AMP, warmup, early stopping and checkpoints stay as they are. With FGSM on the current
    model, the benign view runs first and hands FGSM its input gradient, and the loop trains the last view instead
    (`step.advamd_step`). `method=vanilla` is exactly the task's Ultralytics trainer. Ā is calibrated before the first
    epoch and refreshed by callbacks; Ā, the flip counts and the frozen target's weights ride in the checkpoint as the
    model attribute `advamd_state`. The task's trainer supplies the model, data, loss, validator and plots; the attack
    objective follows the model (`attacks.objectives.objective_for`).
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | Settings | None = None, _callbacks: dict | None = None):
        """Resolve and check the settings before any work (`resolve_settings`), then initialize the task's trainer.

        A `.pt` model must be on disk (nothing is downloaded), `resume` must name an interrupted AdvAmd run
        (`resume_checkpoint`), and the dataset's images must be on disk (`resolve_dataset`; `data` may name the embedded
        digits-det dataset, built on first use), as on the command line: a start that fails writes nothing.

        Args:
            cfg (str | dict | SimpleNamespace): Base configuration; its AdvAmd keys are resolved with the overrides.
            overrides (dict | Settings, optional): Ultralytics and AdvAmd settings, optionally `hyp=path/to.yaml`, or
                settings resolved already.
            _callbacks (dict, optional): Ultralytics callbacks.
        """
        if not isinstance(overrides, Settings):  # AdvAmd keys of a cfg YAML count as the user's, under the overrides
            own = {k: v for k, v in cfg2dict(cfg).items() if k in ADVAMD_KEYS}
            overrides = resolve_settings({**own, **(overrides or {})}, type(self))
        self.settings = overrides
        super().__init__({**cfg2dict(cfg), **overrides.advamd}, self.trainer_overrides(overrides), _callbacks)
        vars(self.args).update(overrides.advamd)  # resolved once; saved with train_args
        self.method = overrides.method(self.args)
        self.amend = self.method.amends
        self.stage = self.vulnerability = self.abar = self.resume_state = self.guard = self.target = None
        if self.amend:
            self.add_callback("on_train_start", type(self).setup_advamd)
            self.add_callback("on_train_epoch_end", type(self).refresh_abar)

    def trainer_overrides(self, settings: Settings) -> dict:
        """Return the settings Ultralytics' trainer is given over its defaults: the user's."""
        return settings.overrides

    def setup_model(self):
        """Build the model as Ultralytics does, from the checkpoint the settings opened instead of opening it again."""
        opened = self.settings.opened
        same = opened is not None and Path(str(self.model)).resolve() == opened.path.resolve()
        if not same or isinstance(self.args.pretrained, (str, Path)):
            return super().setup_model()
        weights = None if self.args.pretrained is False and not self.resume else opened.model
        self.model = self.get_model(cfg=opened.model.yaml, weights=weights, verbose=RANK in {-1, 0})
        return opened.ckpt

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Return the task's model, converted to dual BN when the auxiliary BN is on (before EMA is built)."""
        if self.resume and weights is not None:  # M_T, Ā and the flip counts, whatever the BN
            self.resume_state = getattr(weights, "advamd_state", None)
        if not (self.amend and self.args.aux_bn):  # a plain model, also from an AdvAmd checkpoint
            weights = strip_aux_bn(deepcopy(weights)) if weights is not None and has_dual_bn(weights) else weights
            return super().get_model(cfg, weights, verbose)
        model = super().get_model(cfg, None, verbose)
        if weights is not None and has_dual_bn(weights):  # an AdvAmd checkpoint: keep its trained auxiliary BN
            convert_dual_bn(model).load(weights)
        else:  # stock weights: the auxiliary BN starts as a copy of the loaded main BN
            if weights:
                model.load(weights)
            convert_dual_bn(model)
        if verbose:
            added = dual_bn_overhead(model)
            LOGGER.info(
                f"AdvAmd: {added['layers']} auxiliary BNs add {added['parameters']:,} parameters "
                f"({100 * added['parameters_fraction']:.2f}%) and {added['buffers']:,} buffer elements"
            )
        return model

    def get_validator(self):
        """Return the task's Ultralytics validator (main BN only, stock losses), given the Ultralytics settings only."""
        args = self.args
        self.args = deepcopy(args)
        for k in ADVAMD_KEYS:
            delattr(self.args, k)
        try:
            return super().get_validator()
        finally:
            self.args = args

    def label_loss_items(self, loss_items=None, prefix="train"):
        """Label the loss items like Ultralytics; the validation columns leave out the extra views' losses, which the
        validator (benign images, stock loss) does not compute and would log as 0."""
        items = super().label_loss_items(loss_items, prefix)
        if prefix != "val":
            return items
        extra = {f"val/{name}" for name in self.method.columns()}
        if loss_items is None:  # the column names
            return [k for k in items if k not in extra]
        return {k: v for k, v in items.items() if k not in extra}

    def setup_advamd(self):
        """Build the attack stage and the frozen target M_T, then calibrate Ā (paper Algorithm 1, stage 1)."""
        args, model = self.args, unwrap_model(self.model)
        nc = self.data["nc"]
        self.vulnerability = Vulnerability(nc)
        state = self.resume_state or {}
        self.target = None  # M_T: the starting weights, frozen, in eval mode (attacked, or a teacher)
        if self.method.needs_target():
            self.target = strip_aux_bn(freeze_target(model))
            if state.get("target") is not None:
                self.target.load_state_dict(state["target"])
        self.method.setup(self.target)
        if not self.resume:  # distillation's student starts at its optimum; a resumed run has its weights
            self.method.start([model, *([self.ema.ema] if self.ema else [])])
        self.stage = self.attack_stage() if self.method.attacks else None  # distillation attacks nothing
        self.guard = ViewGuard(model)  # view batches pick their BN; a non-finite view leaves BN statistics alone
        if state.get("vulnerability") is not None:
            self.vulnerability.load_state_dict(state["vulnerability"])
        if state.get("abar") is not None:
            self.abar = state["abar"].to(self.device)
        elif args.advamd_loss:
            self.calibrate_abar()
        self.refresh_batches = 0  # batches of this epoch whose flips were counted (abar_update=epoch)
        self.save_advamd_state()

    def attack_stage(self) -> AttackStage:
        """Build the attack stage of the run's settings: the attack, on M_T or the current model."""
        args = self.args
        attack = build_attack(
            args.attack,
            eps=args.eps,
            norm=args.norm,
            steps=args.steps,
            step_size=args.step_size,
            random_start=args.random_start,
            deepfool=args.deepfool,
            seed=args.seed,
        )
        return AttackStage(
            attack,
            phi=args.phi,
            attack_model=args.attack_model,
            target=self.target if args.attack_model == "target" else None,
            vulnerability=self.vulnerability,
            terms=args.attack_terms,
            attack_aux_bn=self.method.attack_aux_bn(),
            attack_labels=args.attack_labels,
            attack_conf=args.attack_conf,
        )

    def calibrate_abar(self):
        """Attack `abar_batches` training batches to estimate Ā before the first epoch."""
        model = unwrap_model(self.model)
        self.stage.collect_stats = True
        n = min(self.args.abar_batches, len(self.train_loader))
        loader = self.train_loader
        for _, batch in TQDM(zip(range(n), loader), total=n, desc="A-bar calibration"):
            self.stage(super().preprocess_batch(batch), model=model)
        self.stage.collect_stats = False
        self.update_abar()
        LOGGER.info(f"A-bar ({self.args.abar_norm}): {self.abar.cpu().numpy().round(3)}")

    def update_abar(self):
        """Set Ā from the flip counts summed over DDP ranks (kept when none was counted); log it; reset the counts."""
        counts = self.vulnerability.counts
        if dist.is_available() and dist.is_initialized():  # every rank reduces, before any rank-local decision
            summed = counts.to(self.device)
            dist.all_reduce(summed)
            self.vulnerability.counts = summed.cpu()
        if self.abar is None or self.vulnerability.counts.sum() > 0:
            self.abar = self.vulnerability.abar(normalize=self.args.abar_norm).to(self.device)
            if RANK in {-1, 0}:
                LOGGER.info(self.vulnerability.summary(self.abar))
            self.log_vulnerability()
        self.vulnerability.reset()

    def refresh_abar(self):
        """At the end of each epoch: Ā from the flips of its first `abar_batches` batches (`abar_update=epoch`)."""
        if self.refresh_batches:
            self.update_abar()
        self.refresh_batches = 0
        self.save_advamd_state()

    def log_vulnerability(self):
        """Plot the flip matrix and Ā to `vulnerability.png` and, when Ultralytics' TensorBoard is on, there too."""
        if RANK not in {-1, 0}:
            return
        figure = self.vulnerability.figure(self.data["names"])
        if self.args.plots:
            figure.savefig(self.save_dir / "vulnerability.png", dpi=100)
        if writer := tensorboard_writer():
            step = self.epoch + 1 if hasattr(self, "epoch") else self.start_epoch  # calibration: before any epoch
            writer.add_figure("advamd/vulnerability", figure, step)

    def save_advamd_state(self):
        """Attach Ā, the flip counts and the target's weights to the model and its EMA, so checkpoints carry them."""
        target = self.target
        state = {
            "abar": None if self.abar is None else self.abar.detach().cpu(),
            "vulnerability": self.vulnerability.state_dict(),
            "target": None if target is None else {k: v.detach().cpu() for k, v in target.state_dict().items()},
        }
        for m in (unwrap_model(self.model), self.ema.ema if self.ema else None):
            if m is not None:
                m.advamd_state = state

    def preprocess_batch(self, batch: dict) -> dict:
        """Preprocess like Ultralytics, then attack the batch, train all its views but one and return that one."""
        batch = super().preprocess_batch(batch)
        if not self.amend:
            return batch
        module = wrap_criterion(unwrap_model(self.model))
        a = self.args
        if self.stage is not None:
            self.stage.collect_stats = (
                a.advamd_loss and a.abar_update == "epoch" and self.refresh_batches < a.abar_batches
            )
            self.refresh_batches += self.stage.collect_stats
        world = self.world_size if RANK != -1 else 1
        backward = lambda loss: self.scaler.scale(loss * world).backward()  # noqa: E731
        return advamd_step(self.model, module, batch, self.stage, self.method, self.abar, backward)

    def optimizer_step(self):
        """Step like Ultralytics, but skip a step with a non-finite view or gradient (a NaN never reaches the weights);
        `method=vanilla` steps exactly as Ultralytics does."""
        if not self.amend:
            return super().optimizer_step()
        bad = self.guard.pop_bad() if self.guard else {}
        if dist.is_available() and dist.is_initialized():  # every rank skips together (and keeps one AMP scale)
            flag = torch.tensor(float(bool(bad)), device=self.device)
            dist.all_reduce(flag)
            bad = bad or ({"a view on another rank": float("nan")} if flag.item() else {})
        finite = True
        if not bad and not self.scaler.is_enabled():  # with AMP, GradScaler checks the gradients itself
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)))  # one sync, fused
        if bad or not finite:
            what = f"non-finite AdvAmd loss {bad}" if bad else "non-finite gradients"
            LOGGER.warning(f"{what} at epoch {self.epoch + 1}: optimizer step skipped")
            self.optimizer.zero_grad()
            return
        super().optimizer_step()

    def plot_training_samples(self, batch: dict, ni: int) -> None:
        """Plot Ultralytics' training mosaic and, with AdvAmd, the benign / mediate / adversarial views."""
        if "img_adv" in batch:  # first: Ultralytics' plot turns the batch's tensors into arrays
            batch = {**batch, "img": batch["img_benign"]}  # the loop's view may be another one
            grid = plot_views(batch, self.save_dir / f"train_views{ni}.jpg", on_plot=self.on_plot)
            if writer := tensorboard_writer():
                writer.add_image("advamd/views", grid, ni, dataformats="HWC")
        super().plot_training_samples(batch, ni)


class AdvAmdTrainer(AdvAmdMixin, TASKS["detect"].trainer):
    """Train a detector with Adversarial Amendment: `DetectionTrainer` with `AdvAmdMixin`.

    Examples:
        >>> trainer = AdvAmdTrainer(overrides={"model": "best.pt", "data": "data/digits-det.yaml", "attack": "pgd"})
        >>> trainer.train()
    """

    task_name = "detect"


class AdvAmdSegmentationTrainer(AdvAmdMixin, TASKS["segment"].trainer):
    """Train an instance-segmentation model with Adversarial Amendment: `SegmentationTrainer` with `AdvAmdMixin`.

    The attack maximizes the full segmentation loss (box, mask, cls, dfl) with `attack_terms=all`.

    Examples:
        >>> AdvAmdSegmentationTrainer(overrides={"model": "yolov8n-seg.yaml", "data": "data/digits-seg.yaml"}).train()
    """

    task_name = "segment"


class AdvAmdClassificationTrainer(AdvAmdMixin, TASKS["classify"].trainer):
    """Train an image classifier with Adversarial Amendment: `ClassificationTrainer` with `AdvAmdMixin`.

    The attack maximizes the cross-entropy; Ā weights each adversarial image's cross-entropy by its class.

    Examples:
        >>> AdvAmdClassificationTrainer(overrides={"model": "yolov8n-cls.yaml", "data": "data/digits-cls.yaml"}).train()
    """

    task_name = "classify"


TRAINERS = {t.task_name: t for t in (AdvAmdTrainer, AdvAmdSegmentationTrainer, AdvAmdClassificationTrainer)}


def advamd_trainer(overrides: dict | Settings, _callbacks: dict | None = None) -> AdvAmdMixin:
    """Return the trainer of the run's method and task (see `model_task`), like `yolo train` picks the task's trainer.

    Raises:
        ValueError: For a task AdvAmd does not train, naming the supported ones (`resolve_settings`).
    """
    settings = overrides if isinstance(overrides, Settings) else resolve_settings(overrides)
    return settings.method.trainer(settings.task)(overrides=settings, _callbacks=_callbacks)
