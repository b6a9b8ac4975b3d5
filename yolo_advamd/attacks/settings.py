"""Attack settings, parsed and checked in one place: every entry point (training, validation, the attack API, the
CLIs) resolves its attack through `attack_settings`, which fills the defaults and then builds the attack, whose class
checks the rest with the functions below (so each rule has one home).

Rules:
    - `eps`: a number or a fraction string such as "8/255"; in (0, range] for the L-inf norm (range = 1 on images in
      [0, 1]: a larger budget is no budget), any positive number for L2 (a per-image norm can exceed 1).
    - `norm`: "inf" (also "linf", "l_inf") or 2 (also "2", "l2").
    - `steps`: a whole number >= 1; default per attack (`DEFAULT_STEPS`); FGSM is exactly one step.
    - `step_size`: a number > 0, or None for the attack's default; DeepFool computes its own.
    - `random_start`: True for PGD, False otherwise, by default; DeepFool starts at the clean images.
    - `attack_labels`: "gt" (the ground truth) or "pred" (the attacked model's own predictions, `attacks.targets`);
      `attack_conf`, the confidence above which a prediction is a target, in (0, 1).
    - `deepfool`: DeepFool's variant, "exact" (the default: one backward per object rank and candidate class, the
      paper's) or "fast" (a fixed number of backward passes per step); refused with another attack.
    - `attacks`, `eps` lists (validation's attack × ε grid): comma-separated strings or lists, each budget as `eps`;
      `none` (or nothing) for no attack; at least one budget for the attacks; `deepfool` only with DeepFool among them.
"""

from __future__ import annotations

import math

ATTACK_NAMES = ("fgsm", "pgd", "deepfool")
DEFAULT_STEPS = {"fgsm": 1, "pgd": 10, "deepfool": 5}  # a DeepFool step costs ~(candidates - 1) input backwards
ATTACK_LABELS = ("gt", "pred")
DEEPFOOL_VARIANTS = ("exact", "fast")  # the first is the default (see yolo_advamd/attacks/deepfool.py)
DEFAULT_CANDIDATES = {"fast": 5, "exact": 10}  # DeepFool's classes per object, the true one included


def is_number(x) -> bool:
    """Return True for a real number (int or float), False for bools and anything else."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_eps(value) -> float:
    """Return a budget given as a number or as a decimal or fraction string ("0.03", "8/255"), as a float.

    Raises:
        ValueError: If `value` is neither, saying what was given and how to write it.
    """
    if is_number(value):
        return float(value)
    text = str(value).strip()
    num, slash, den = text.partition("/")
    try:
        number = float(num) / float(den) if slash else float(text)
    except ValueError:
        raise ValueError(f"eps={value} is not a number: write a decimal (eps=0.03) or a fraction (eps=8/255)") from None
    except ZeroDivisionError:
        raise ValueError(f"eps={value} divides by zero: write a fraction such as eps=8/255") from None
    if not math.isfinite(number):
        raise ValueError(f"eps={value} is not finite: give a budget such as eps=0.01")
    return number


def parse_list(value, cast, key: str) -> list:
    """Parse a CLI list (`"fgsm,pgd"`, `"0.01,0.1"`, a number, a list or tuple) into a list of `cast` values."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        return [cast(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip()]
    except ValueError as e:
        raise ValueError(f"{key}={value!r} is not a comma-separated list, e.g. {key}=0.01,8/255 ({e})") from e


def attack_grid(attacks, eps, deepfool=None) -> tuple[list[str], list[float]]:
    """Parse the attacks and budgets that validation crosses (`attacks=fgsm,pgd`, `eps=0.01,8/255`); return both lists.

    Args:
        attacks (str | list[str] | None): Attack names, comma-separated or a list; None or `none` for no attack.
        eps (str | float | list): Budgets, comma-separated or a list, each a number or a fraction (`parse_eps`).
        deepfool (str | None): DeepFool's variant, refused when DeepFool is not among the attacks.

    Returns:
        attacks (list[str]): The attack names, lower case.
        eps (list[float]): The budgets.
    """
    attacks = [a.lower() for a in parse_list(attacks or [], str, "attacks") if a.lower() != "none"]
    eps = parse_list(eps, parse_eps, "eps")
    if attacks and not eps:
        raise ValueError("eps is empty: give at least one budget for the attacks, e.g. eps=0.01,0.1")
    if deepfool is not None and "deepfool" not in attacks:
        raise ValueError(f"deepfool={deepfool} chooses DeepFool's variant: add deepfool to attacks, or drop deepfool=")
    return attacks, eps


def check_norm(norm) -> str | int:
    """Return "inf" or 2 for the accepted spellings of the L-inf and L2 norms."""
    key = str(norm).lower()
    if key in {"inf", "linf", "l_inf"}:
        return "inf"
    if key in {"2", "2.0", "l2"}:
        return 2
    raise ValueError(f"norm={norm!r} is not valid: choose 'inf' (the paper's L-inf) or 2 (L2)")


def check_eps(eps, norm="inf", clip: tuple[float, float] = (0.0, 1.0)) -> float:
    """Return `eps` as a float if it is a valid budget for `norm` on images in `clip`, else raise naming the range."""
    value, norm = parse_eps(eps), check_norm(norm)
    top = clip[1] - clip[0] if norm == "inf" else math.inf
    if not 0 < value <= top:
        raise ValueError(
            f"eps={eps} is outside (0, {top:g}]: eps is an L-{norm} budget on images scaled to [{clip[0]:g}, "
            f"{clip[1]:g}], e.g. eps=0.01 or eps=8/255"
        )
    return value


def check_steps(steps) -> int:
    """Return `steps` if it is a whole number >= 1, else raise."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps} must be a whole number >= 1, e.g. steps=10")
    return steps


def check_step_size(step_size) -> float | None:
    """Return `step_size` as a float (None stays None) if it is > 0, else raise."""
    if step_size is None:
        return None
    if not is_number(step_size) or step_size <= 0:
        raise ValueError(f"step_size={step_size} must be > 0, or empty for the attack's default")
    return float(step_size)


def check_attack_labels(labels, conf) -> str:
    """Return `attack_labels` normalized if it and `attack_conf` are valid, else raise naming the key and the fix."""
    name = str(labels).lower()
    if name not in ATTACK_LABELS:
        raise ValueError(
            f"attack_labels={labels} is not valid: choose gt (the ground truth, the paper's) or pred (the "
            "attacked model's own predictions on the clean images)"
        )
    if not is_number(conf) or not 0 < conf < 1:
        raise ValueError(
            f"attack_conf={conf} is outside (0, 1): it is the confidence above which a prediction is an "
            "attack target with attack_labels=pred, e.g. attack_conf=0.25"
        )
    return name


def check_deepfool(variant) -> str:
    """Return DeepFool's `variant` ("fast" or "exact", any case) normalized, else raise naming the choices."""
    key = str(variant).lower()
    if key not in DEEPFOOL_VARIANTS:
        raise ValueError(
            f"deepfool={variant} is not valid: choose fast ({DEFAULT_CANDIDATES['fast'] - 1} backward passes per step) "
            "or exact (one per object and candidate class, the paper's)"
        )
    return key


def attack_settings(
    attack: str, eps, norm="inf", steps=None, step_size=None, random_start=None, deepfool=None, key: str = "attack"
) -> dict:
    """Resolve and check one attack's settings: the one place where defaults and rules live (see the module docstring).

    Args:
        attack (str): "fgsm", "pgd" or "deepfool" (any case).
        eps (float | str): Budget, a number or a fraction string such as "8/255".
        norm (str | int): "inf" or 2.
        steps (int | None): Iterations; None for the attack's default (`DEFAULT_STEPS`).
        step_size (float | None): Per-step size; None for the attack's default.
        random_start (bool | None): Start from a random point of the eps ball; None for the attack's default.
        deepfool (str | None): DeepFool's variant, "fast" or "exact"; None for "fast" (and for other attacks).
        key (str): The name the caller gives the attack, for messages (`attack`, `attacks`, `method`).

    Returns:
        (dict): `attack`, `eps`, `norm`, `steps`, `step_size`, `random_start`, `deepfool` (None for other attacks),
            ready for `build_attack`.

    Raises:
        ValueError: For the first bad setting, naming it, its value and what would be right.
    """
    from yolo_advamd.attacks import build_attack

    name = str(attack).lower()
    if name not in ATTACK_NAMES:
        raise ValueError(f"{key}={attack} is not an attack: choose one of {', '.join(ATTACK_NAMES)}, e.g. {key}=pgd")
    if random_start is None:
        random_start = name == "pgd"
    if not isinstance(random_start, bool):
        raise ValueError(f"random_start={random_start} must be True or False")
    if name == "deepfool":
        deepfool = check_deepfool(DEEPFOOL_VARIANTS[0] if deepfool is None else deepfool)
    settings = {
        "eps": parse_eps(eps),
        "norm": check_norm(norm),
        "steps": DEFAULT_STEPS[name] if steps is None else steps,
        "step_size": step_size,
        "random_start": random_start,
        "deepfool": deepfool,
    }
    build_attack(name, **{**settings, "eps": eps})  # each attack checks its own rules (naming the value given)
    return {"attack": name, **settings}
