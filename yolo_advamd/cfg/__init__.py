"""AdvAmd settings: defaults, hyperparameter YAMLs, validation and `key=value` parsing on Ultralytics' cfg machinery."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from difflib import get_close_matches
from pathlib import Path

from ultralytics.cfg import merge_equals_args, parse_key_value_pair
from ultralytics.utils import DEFAULT_CFG_DICT, YAML

from yolo_advamd.attacks.objectives import ATTACK_TERMS
from yolo_advamd.attacks.settings import attack_settings, check_attack_labels, is_number
from yolo_advamd.stage import ATTACK_MODELS, DEFAULT_PHI, check_phi

DEFAULT_YAML = Path(__file__).with_name("default.yaml")
ADVAMD_DEFAULTS = YAML.load(DEFAULT_YAML)
ADVAMD_KEYS = frozenset(ADVAMD_DEFAULTS)
ADVAMD_NOTES = {  # key -> its comment in default.yaml, for `help`
    line.split(":", 1)[0]: line.split(" # ", 1)[1].strip()
    for line in DEFAULT_YAML.read_text().splitlines()
    if line[:1].isalpha() and " # " in line
}
METHODS = {  # name -> what it trains, its paper, its hyp file
    "advamd": "benign + mediate views (main BN) + adversarial view (auxiliary BN, classification loss weighted by "
    "A-bar); Yu, Chen and Gan, IJCAI 2023; hyps/advamd-fgsm.yaml, -pgd, -deepfool",
    "advtrain": "benign + adversarial views, shared BN, unweighted loss: the paper's Adv-Train baseline; hyps/advtrain.yaml",
    "detadvprop": "benign view + the stronger of a classification and a localization attack per image (current model, "
    "made and trained through the auxiliary BN); Chen et al., CVPR 2021; hyps/detadvprop.yaml",
    "udfa": "benign detection loss + the adversarial neck features (current model) aligned with the frozen starting "
    "checkpoint's on the clean images; Xu et al., ICIP 2022; hyps/udfa.yaml (model= must be a .pt)",
    "vanilla": "stock Ultralytics training, bit for bit (the control)",
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
METHOD_DEFAULTS = {  # what each relative of AdvAmd changes in the defaults; `fixed` keys define the method
    "advtrain": {"fixed": {"mediate": False, "aux_bn": False, "advamd_loss": False}},  # AdvAmd, every amendment off
    "detadvprop": {  # Det-AdvProp (Chen et al., CVPR 2021): clean + adversarial views, the latter through the aux BN
        "defaults": {"attack": "fgsm", "eps": 1 / 255, "attack_model": "current", "attack_terms": "max"},
        "fixed": {"mediate": False, "aux_bn": True, "advamd_loss": False},
    },
    "udfa": {  # UDFA (ICIP 2022): clean detection loss + the student's adversarial features aligned with M_T's clean ones
        "defaults": {"attack": "fgsm", "eps": 2 / 255, "aux_bn": False},
        "fixed": {"attack_model": "current", "mediate": False, "advamd_loss": False},
    },
}


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
    """Return the default of every AdvAmd setting for `method` (the relatives start from their published settings).

    What the papers leave open, and what we took:
        - detadvprop (Chen et al., CVPR 2021, eq. 3-6 and Algorithm 1): adversarial images from the current model,
          made and trained through the auxiliary BN (every BN has one), clean + adversarial loss 1:1, one adversarial
          image per clean one: the classification or the localization attack, whichever gives the larger detection
          loss per image. The paper explains the method with FGSM and gives neither the attack's budget nor its steps
          (google/automl holds no training code): FGSM at ε = 1/255, AdvProp's weak regime, is our default. The
          attack runs in train mode, as the training step it belongs to; the localization loss is YOLO's box + DFL.
        - udfa (Xu et al., ICIP 2022, grispeut/udfa): see `yolo_advamd.align`. The code's VOC setting is taken: no
          auxiliary BN, one FGSM step of 2/255 from the clean pass's gradient, alignment weights 1 (foreground) and 6
          (background); its adversarial detection term and self-alignment terms are left out (the issue's loss: clean
          detection loss + alignment).
    """
    method = str(method or ADVAMD_DEFAULTS["method"]).lower()
    preset = METHOD_DEFAULTS.get(method, {})
    return {**ADVAMD_DEFAULTS, "method": method, **preset.get("defaults", {}), **preset.get("fixed", {})}


def check_advamd_cfg(cfg: dict) -> dict:
    """Validate AdvAmd settings before any work and fill the per-attack defaults (steps, phi, random_start).

    The attack's own settings (eps, also as a fraction such as 8/255, norm, steps, step size, random start, DeepFool's
    variant) are resolved by `yolo_advamd.attacks.settings.attack_settings`, as in validation and the attack API.

    Args:
        cfg (dict): Settings holding at least every AdvAmd key (other keys are ignored).

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
    ab = cfg["abar_batches"]
    if not isinstance(ab, int) or isinstance(ab, bool) or ab < 1:
        raise ValueError(f"abar_batches={ab} must be a whole number >= 1: A-bar is estimated from that many batches")
    if cfg.get("compile") and cfg["method"] != "vanilla" and (cfg["aux_bn"] or cfg["method"] == "udfa"):
        raise ValueError(
            "compile=True cannot route the adversarial view to the auxiliary BN (nor capture UDFA's features): "
            "Ultralytics' compiled loop calls the model on a bare image tensor, so the view it trains cannot say which "
            "it is. Use compile=False, or a method without them (aux_bn=False, e.g. method=advtrain)"
        )
    for key, value in METHOD_DEFAULTS.get(cfg["method"], {}).get("fixed", {}).items():
        if cfg[key] != value:
            raise ValueError(
                f"{key}={cfg[key]} does not fit method={cfg['method']}, which is defined by {key}={value}: "
                f"drop {key}=, or use method=advamd to combine the AdvAmd switches freely"
            )
    return cfg


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
    program: str, usage: str, keys: dict, ultralytics_keys: bool = True, notes: dict | None = None, methods: bool = False
) -> str:
    """Help for a CLI: usage, its own keys with defaults (and `notes` on them), the training methods when asked, and
    whether Ultralytics' keys are accepted too."""
    lines = [f"usage: python {program} {usage}"]
    if methods:
        lines += ["", "methods (method=...):", *(f"  {k:10s} {v}" for k, v in METHODS.items())]
    lines += ["", "keys (key=value, defaults shown):"]
    for k, v in keys.items():
        setting = f"{k}={'' if v is None else v}"
        lines.append(f"  {setting:22s} # {notes[k]}" if notes and k in notes else f"  {setting}")
    if ultralytics_keys:
        lines += ["", "Every Ultralytics setting (ultralytics/cfg/default.yaml) is accepted as well, e.g. imgsz=320."]
    return "\n".join(lines)
