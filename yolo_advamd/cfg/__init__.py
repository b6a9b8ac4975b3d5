"""AdvAmd settings: defaults, hyperparameter YAMLs, validation and `key=value` parsing on Ultralytics' cfg machinery."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

from ultralytics.cfg import merge_equals_args, parse_key_value_pair
from ultralytics.utils import DEFAULT_CFG_DICT, YAML

from yolo_advamd.attacks.objectives import ATTACK_TERMS, check_terms
from yolo_advamd.attacks.settings import attack_settings, check_attack_labels, is_number
from yolo_advamd.checkpoint import Opened, model_task, open_checkpoint, resume_checkpoint
from yolo_advamd.methods import METHODS, Method, check_method
from yolo_advamd.stage import ATTACK_MODELS, DEFAULT_PHI, check_phi
from yolo_advamd.tasks import TASKS, task_row

DEFAULT_YAML = Path(__file__).with_name("default.yaml")
ADVAMD_DEFAULTS = YAML.load(DEFAULT_YAML)
ADVAMD_KEYS = frozenset(ADVAMD_DEFAULTS)
ADVAMD_NOTES = {  # key -> its comment in default.yaml, for `help`
    line.split(":", 1)[0]: line.split(" # ", 1)[1].strip()
    for line in DEFAULT_YAML.read_text().splitlines()
    if line[:1].isalpha() and " # " in line
}
CHOICES = {
    "method": tuple(METHODS),
    "attack_terms": ATTACK_TERMS,
    "attack_model": ("auto", *ATTACK_MODELS),
    "abar_update": ("none", "epoch"),
    "abar_norm": ("none", "mean"),
    "abar_scope": ("positive", "all"),
}
SWITCHES = ("mediate", "aux_bn", "advamd_loss")


def load_hyp(path: str | Path) -> dict:
    """Load a hyperparameter YAML (AdvAmd and/or Ultralytics keys).

    Args:
        path (str | Path): The YAML file, e.g. hyps/advamd-pgd.yaml.

    Returns:
        (dict): Its settings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hyp={path} does not exist: pass a YAML such as hyp=hyps/advamd-fgsm.yaml")
    hyp = YAML.load(path) or {}
    if not isinstance(hyp, dict):
        raise ValueError(f"hyp={path} must hold key: value settings, found {type(hyp).__name__}")
    hyp.pop("hyp", None)
    return hyp


def advamd_defaults(method: str | None = None) -> dict:
    """Return the default of every AdvAmd setting for `method` (the relatives start from their published settings:
    see each class in `yolo_advamd.methods`)."""
    method = str(method or ADVAMD_DEFAULTS["method"]).lower()
    preset = cls.preset() if (cls := METHODS.get(method)) else {}  # an unknown method is refused by the check
    return {**ADVAMD_DEFAULTS, "method": method, **preset}


def check_advamd_cfg(cfg: dict, task: str | None = None) -> dict:
    """Validate AdvAmd settings before any work and fill the per-attack defaults (steps, phi, random_start).

    The attack's own settings (eps, also as a fraction such as 8/255, norm, steps, step size, random start, DeepFool's
    variant) are resolved by `yolo_advamd.attacks.settings.attack_settings`, as in validation and the attack API.

    Args:
        cfg (dict): Settings holding at least every AdvAmd key (other keys are ignored).
        task (str | None): The run's task, when known: settings that do not exist for it are refused too.

    Returns:
        (dict): `cfg` itself, with `method`, `attack` and `norm` normalized and per-attack defaults resolved.

    Raises:
        ValueError: Naming the key, the value and the valid range, for the first bad setting.
    """
    for key in ("method", "attack_terms", "attack_model", "abar_update", "abar_norm", "abar_scope"):
        cfg[key] = str(cfg[key]).lower()
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ValueError(f"{key}={cfg[key]} is not valid: choose one of {', '.join(map(str, choices))}")
    attack = {k: cfg[k] for k in ("attack", "eps", "norm", "steps", "step_size", "random_start", "deepfool")}
    cfg.update(attack_settings(**attack))  # eps parsed (8/255 too) and checked, per-attack steps and random start
    cfg["attack_labels"] = check_attack_labels(cfg["attack_labels"], cfg["attack_conf"])
    if cfg["phi"] is None:
        cfg["phi"] = DEFAULT_PHI[cfg["attack"]]
    check_phi(cfg["phi"])
    for key in ("beta1", "beta2", "beta3"):
        beta = cfg[key]
        if not is_number(beta) or not beta >= 0:
            raise ValueError(f"{key}={beta} must be a number >= 0 (the paper uses 1.0)")
    for key in SWITCHES:
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{key}={cfg[key]} must be True or False")
    t = cfg["temperature"]
    if not is_number(t) or not t > 0:
        raise ValueError(f"temperature={t} must be a number > 0: the softmax or sigmoid temperature T, e.g. 100")
    hard = cfg["distill_hard"]
    if not is_number(hard) or not 0 <= hard <= 1:
        raise ValueError(
            f"distill_hard={hard} is outside [0, 1]: the weight of the ground-truth class term (the soft term gets "
            "1 - it), e.g. 0.0"
        )
    ab = cfg["abar_batches"]
    if not isinstance(ab, int) or isinstance(ab, bool) or ab < 1:
        raise ValueError(f"abar_batches={ab} must be a whole number >= 1: A-bar is estimated from that many batches")
    check_magnet(cfg)
    check_method(cfg, task)
    if task in TASKS and TASKS[task].classifier:  # a classifier has no box to attack
        check_terms(cfg["attack_terms"], classifier=True)
    return cfg


def check_magnet(cfg: dict) -> None:
    """Refuse MagNet settings out of their range, naming the key (`magnet_fpr`, `magnet_noise`, `magnet_p`)."""
    fpr, noise, p = cfg["magnet_fpr"], cfg["magnet_noise"], cfg["magnet_p"]
    if not is_number(fpr) or not 0 < fpr < 1:
        raise ValueError(
            f"magnet_fpr={fpr} must be in (0, 1): the share of benign val images MagNet may reject, e.g. 0.005"
        )
    if not is_number(noise) or not noise >= 0:
        raise ValueError(f"magnet_noise={noise} must be a number >= 0: the noise's standard deviation, e.g. 0.1")
    if p not in (1, 2) or isinstance(p, bool):
        raise ValueError(f"magnet_p={p} must be 1 or 2: the exponent of the reconstruction error")


def check_keys(base: dict, custom: dict, source: str = "argument", listed: Iterable[str] | None = None) -> None:
    """Reject keys of `custom` that `base` does not have, suggesting the closest valid ones and listing the rest.

    Args:
        base (dict): Every valid key.
        custom (dict): The keys given.
        source (str): What the keys are, for the message.
        listed (Iterable[str] | None): The keys to list in the message (e.g. the program's own, when `base` also
            holds every Ultralytics setting); all of `base` when None.

    Raises:
        SyntaxError: Listing each unknown key with similar valid keys, then the valid keys.
    """
    if unknown := [k for k in custom if k not in base and k != "save_dir"]:
        lines = []
        for k in unknown:
            close = get_close_matches(k, base, n=3)
            hint = f" Did you mean {', '.join(f'{c}={base[c]}' for c in close)}?" if close else ""
            lines.append(f"'{k}' is not a valid {source}.{hint}")
        valid = list(base if listed is None else listed)
        more = ", and every Ultralytics setting ('yolo cfg' lists them)" if len(valid) < len(base) else ""
        raise SyntaxError("\n".join(lines) + f"\nValid keys: {', '.join(valid)}{more}.")


def merge_cfg(overrides: dict) -> dict:
    """Expand an optional `hyp=` YAML under explicit overrides and reject unknown keys with suggestions.

    Args:
        overrides (dict): User settings (Ultralytics and AdvAmd keys, optionally `hyp`).

    Returns:
        (dict): The user settings with the hyp file's settings added (explicit overrides win); no defaults added.

    Raises:
        SyntaxError: For an unknown key, listing similar valid keys.
    """
    base = {**DEFAULT_CFG_DICT, **ADVAMD_DEFAULTS}
    check_keys(base, overrides, listed=ADVAMD_DEFAULTS)
    if not overrides.get("hyp"):
        return dict(overrides)
    hyp = load_hyp(overrides["hyp"])
    check_keys(base, hyp, source=f"key in hyp={overrides['hyp']}", listed=ADVAMD_DEFAULTS)
    return {**hyp, **overrides}


def resolve_advamd_cfg(overrides: dict) -> dict:
    """Return every AdvAmd setting for user settings: hyp file, the method's defaults and overrides merged, checked.

    Args:
        overrides (dict): User settings (Ultralytics and AdvAmd keys, optionally `hyp`).

    Returns:
        (dict): Every AdvAmd setting and the given Ultralytics ones, per-attack defaults resolved (`check_advamd_cfg`).
    """
    merged = merge_cfg(overrides)
    return check_advamd_cfg({**advamd_defaults(merged.get("method")), **merged})


@dataclass
class Settings:
    """A run's settings, resolved and checked once (`resolve_settings`); the trainer reads them, nothing parses again.

    Attributes:
        overrides (dict): The user's settings for Ultralytics' trainer: `hyp=` merged, `resume=` and `data=` resolved.
        advamd (dict): Every AdvAmd setting, checked: ε parsed, the method's preset and per-attack defaults applied,
            `attack_model=auto` decided; a resumed run's are its checkpoint's.
        task (str): The run's task.
        method (type[Method]): The class of its method.
        opened (Opened | None): The checkpoint it starts from or resumes, opened once.
    """

    overrides: dict
    advamd: dict
    task: str
    method: type[Method]
    opened: Opened | None = None


def resolve_settings(overrides: dict, trainer: type | None = None, default_data: bool = False) -> Settings:
    """Turn user settings (command line, `hyp=` file, Python) into a run's checked settings, before any work.

    Every check that can fail does so here, before a run directory or a cache is made: unknown keys, bad values,
    a `.pt` or `resume=` not on disk or not resumable, a method that does not fit the task or the start, a dataset
    whose images are missing or do not fit the task.

    Args:
        overrides (dict): User settings (Ultralytics and AdvAmd keys, optionally `hyp`).
        trainer (type | None): The trainer class the settings are for (its `task_name` must be the model's), when
            the caller chose one; None lets the model choose.
        default_data (bool): Give `data=` the task's embedded dataset when it is not given (the command line).

    Returns:
        (Settings): The resolved settings.
    """
    from yolo_advamd.data import check_task_data, resolve_dataset

    overrides = merge_cfg(overrides)
    resume = overrides.get("resume")
    if resume:  # Ultralytics would fall back to another run, or fail after making a directory
        opened = resume_checkpoint(resume)
        overrides["resume"] = str(opened.path)
        source = opened.ckpt["train_args"]  # a resumed run keeps its own settings, as Ultralytics' check_resume does
    else:
        opened = open_checkpoint(overrides["model"]) if overrides.get("model") else None
        source = overrides
    task = trainer.task_name if trainer else "detect"
    if overrides.get("task") or resume or overrides.get("model"):
        found = model_task(overrides, opened)
        if trainer and found != task:
            given = "resume" if resume else "model"
            raise ValueError(
                f"{given}={overrides[given]} is a {found} model and {trainer.__name__} trains {task} "
                "models: use advamd_trainer(), which picks the trainer by task"
            )
        task = found
    task_row(task, "AdvAmd trains")  # before the method is asked whether it trains it
    advamd = check_advamd_cfg({**advamd_defaults(source.get("method")), **source}, task)
    if advamd["attack_model"] == "auto":
        advamd["attack_model"] = "target" if str(source.get("model") or resume).endswith(".pt") else "current"
    method = METHODS[advamd["method"]]
    method.check_start(overrides)
    if default_data and not resume and not overrides.get("data"):
        overrides["data"] = TASKS[task].data
    if data := overrides.get("data") or (source.get("data") if resume else None):
        data = resolve_dataset(data)  # the dataset's images checked before the run's directory is made
        check_task_data(task, data)
        if overrides.get("data"):
            overrides["data"] = data
    return Settings(overrides, {k: advamd[k] for k in ADVAMD_KEYS}, task, method, opened)


def parse_cli(argv: list[str] | None = None) -> dict:
    """Parse `key=value` command-line arguments like `yolo train` does.

    Args:
        argv (list[str] | None): Arguments without the program name; defaults to `sys.argv[1:]`.

    Returns:
        (dict): The parsed settings, or {"help": True} when help was asked for.

    Raises:
        SyntaxError: For an argument that is not `key=value`.
    """
    argv = sys.argv[1:] if argv is None else argv
    if any(a.lstrip("-") in {"help", "h"} for a in argv):
        return {"help": True}
    out = {}
    for arg in merge_equals_args(argv):
        if "=" not in arg:
            raise SyntaxError(f"'{arg}' is not a key=value argument: write e.g. epochs=10 (or 'help' for the keys)")
        try:
            key, value = parse_key_value_pair(arg)
        except AssertionError as e:
            raise SyntaxError(f"'{arg}' has no value: {e}") from e
        out[key] = value
    return out


def help_text(
    program: str,
    usage: str,
    keys: dict,
    ultralytics_keys: bool = True,
    notes: dict | None = None,
    methods: bool = False,
) -> str:
    """Help for a CLI: usage, its own keys with defaults (and `notes` on them), the training methods when asked, and
    whether Ultralytics' keys are accepted too."""
    lines = [f"usage: python {program} {usage}"]
    if methods:
        lines += ["", "methods (method=...):", *(f"  {k:10s} {m.about}" for k, m in METHODS.items())]
    lines += ["", "keys (key=value, defaults shown):"]
    for k, v in keys.items():
        setting = f"{k}={'' if v is None else v}"
        lines.append(f"  {setting:22s} # {notes[k]}" if notes and k in notes else f"  {setting}")
    if ultralytics_keys:
        lines += ["", "Every Ultralytics setting (ultralytics/cfg/default.yaml) is accepted as well, e.g. imgsz=320."]
    return "\n".join(lines)
