"""The base of every training method: what a method is, in one place, for the trainer, the step and the settings."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from yolo_advamd.tasks import TASKS
from yolo_advamd.views import IMAGES, View


class Method:
    """A training method: its preset, the settings that define it, its views and what it needs at setup.

    Subclasses set the class attributes and override what differs; an instance is built from a run's resolved
    settings. The trainer, the step, the settings check and `help` ask the method, never its name.

    Attributes:
        name (str): Its `method=` value.
        about (str): Its line in `python train_advamd.py help`: what it trains, its paper, its hyp file.
        defaults (dict): The settings it starts from; the user may change them.
        fixed (dict): The settings it is defined by; a contradicting setting is refused.
        tasks (tuple): The tasks it trains.
        amends (bool): False for the task's stock Ultralytics trainer, bit for bit (no attack, no extra view).
        attacks (bool): Whether a step attacks its batch (`AttackStage`); False for a method whose views need no
            adversarial images (distillation).
        needs_teacher (bool): Whether it needs the frozen starting checkpoint as a teacher (`model=` must be a `.pt`).
        start_role (str): What it does with the starting checkpoint when it needs one (a teacher, a model to defend),
            for the refusal of a start without one; empty: any start.
        args (SimpleNamespace): The run's settings.
        teacher (torch.nn.Module | None): The teacher (`needs_teacher`), set by the trainer at `setup`.
        targets: What `prepare` made for the current batch (UDFA: the teacher's features; distillation: its logits).
    """

    name = ""
    about = ""
    defaults: dict = {}
    fixed: dict = {}
    tasks = tuple(TASKS)
    amends = True
    attacks = True
    needs_teacher = False
    start_role = ""

    def __init__(self, args: SimpleNamespace):
        """Bind the method to a run's resolved settings; a teacher comes at `setup`."""
        self.args = args
        self.teacher = self.targets = None

    @classmethod
    def preset(cls) -> dict:
        """Return the settings the method changes in the defaults: its `defaults`, then its `fixed` settings."""
        return {**cls.defaults, **cls.fixed}

    @classmethod
    def check(cls, cfg: dict) -> None:
        """Refuse settings that contradict the method, naming the key and the fix (`cfg`: every AdvAmd setting)."""
        if cfg.get("compile") and cls.amends and cls.routes_views(cfg):
            raise ValueError(
                "compile=True cannot route the adversarial view to the auxiliary BN (nor capture UDFA's features): "
                "Ultralytics' compiled loop calls the model on a bare image tensor, so the view it trains cannot say "
                "which it is. Use compile=False, or a method without them (aux_bn=False, e.g. method=advtrain)"
            )
        for key, value in cls.fixed.items():
            if cfg[key] != value:
                raise ValueError(
                    f"{key}={cfg[key]} does not fit method={cls.name}, which is defined by {key}={value}: "
                    f"drop {key}=, or use method=advamd to combine the AdvAmd switches freely"
                )

    @classmethod
    def check_start(cls, overrides: dict) -> None:
        """Refuse a run whose start the method cannot use (`overrides`: the user's settings), before any work: one
        without a checkpoint when the method needs one (`start_role`; `model=` is not a `.pt`, the run not resumed)."""
        if cls.start_role and not str(overrides.get("model", "")).endswith(".pt") and not overrides.get("resume"):
            raise ValueError(
                f"method={cls.name} {cls.start_role}, the starting checkpoint, and model={overrides.get('model')} "
                "has none: pass a trained checkpoint, e.g. model=runs/detect/train/weights/best.pt"
            )

    @classmethod
    def trainer(cls, task: str) -> type:
        """Return the trainer class that runs the method for `task`: the task's AdvAmd trainer."""
        from yolo_advamd.trainer import TRAINERS

        return TRAINERS[task]

    @classmethod
    def routes_views(cls, cfg: dict) -> bool:
        """Whether the model must know which view it runs (auxiliary BN), which a compiled loop cannot tell it."""
        return bool(cfg["aux_bn"])

    def needs_target(self) -> bool:
        """Whether the run freezes the starting weights (M_T): to attack them, or as the teacher."""
        return self.args.attack_model == "target" or self.needs_teacher

    def setup(self, target) -> None:
        """Take what the method needs from the trainer's setup: `target`, the frozen starting weights (or None), is
        the teacher of a method that `needs_teacher`."""
        if self.needs_teacher:
            self.teacher = target

    def start(self, models: list) -> None:
        """Adjust the weights a new run starts from, in the model and its EMA alike (a resumed run keeps its own)."""

    def attack_aux_bn(self) -> bool:
        """Whether the current model is attacked through its auxiliary BNs."""
        return False

    def views(self, reuse_gradient: bool) -> tuple[str, ...]:
        """Return the views a step trains, in the order they run; the last one is the training loop's own pass.

        The loop's pass is the benign view, except when the benign pass must come first to hand its input gradient to
        FGSM (`reuse_gradient`): then the loop runs the last extra view. Views with a zero β, or the mediate view with
        `mediate=False`, are left out (the benign view stays the loop's pass even with β1 = 0: Ultralytics needs one).
        """
        a = self.args
        extra = [n for n, on in (("med", a.mediate and a.beta2 > 0), ("adv", a.beta3 > 0)) if on]
        return ("benign", *extra) if reuse_gradient else (*extra, "benign")

    def column(self, name: str) -> str:
        """Return the loss column of the extra view `name` ("med" or "adv")."""
        return f"{name}_loss"

    def columns(self) -> tuple[str, ...]:
        """Return the loss columns the method adds to the task's (training only: the validator scores benign images)."""
        return tuple(self.column(n) for n in ("med", "adv")) if self.amends else ()

    def prepare(self, batch: dict) -> None:
        """Make what the views of an attacked batch need beyond its images (UDFA: the teacher's features)."""

    def view(self, name: str, abar: torch.Tensor | None) -> View:
        """Return how the view `name` of `batch` is trained: its β, its BN, its weights Ā."""
        a = self.args
        adv = name == "adv"
        weighted = adv and a.advamd_loss and abar is not None
        return View(
            name,
            self.column(name),
            {"benign": a.beta1, "med": a.beta2, "adv": a.beta3}[name],
            aux_bn=adv and a.aux_bn,
            class_weights=abar if weighted else None,
            abar_scope=a.abar_scope if weighted else "positive",
        )

    def view_batch(self, batch: dict, name: str, abar: torch.Tensor | None) -> dict:
        """Return the batch of one view of an attacked batch, for `model(view_batch)`.

        Args:
            batch (dict): A preprocessed batch; `img_med` and `img_adv` (from `AttackStage`) for those views.
            name (str): "benign", "med" or "adv".
            abar (torch.Tensor | None): Per-class weights (nc,) for the adversarial view's classification loss.

        Returns:
            (dict): The entries of `batch`, `img` set to the view's images (the clean ones kept as `img_benign`) and
                `view` set to the `View`.
        """
        return {**batch, "img": batch[IMAGES[name]], "img_benign": batch["img"], "view": self.view(name, abar)}
