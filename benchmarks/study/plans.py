"""Which runs a profile or the study makes, given what is recorded, and the settings each run trains with.

A profile's plan is the paper's comparison (`plan`); the study screens every arm on seed 0 and confirms the promising
methods on seeds 1 and 2 (`study_plan`), then adds the `capacity` arm by a rule fixed in advance (`capacity_arm`).
"""

from __future__ import annotations

from pathlib import Path

from yolo_advamd.methods import METHODS

from . import paths
from .arms import ARMS, CAPACITY, ROUND_2, SCREEN_BAR, STUDY, TABLE3, TASKS, TRAIN_STEPS, VANILLA


def method_name(s: dict) -> str:
    """Name a run's method: vanilla, advtrain, advamd or the ablation row (M = mediate, B = aux BN, L = AdvAmd loss)."""
    if s["method"] != "advamd":
        return s["method"]
    on = "".join(k for k, v in zip("MBL", (s["mediate"], s["aux_bn"], s["advamd_loss"])) if v)
    return "advamd" if on == "MBL" else f"ablation-{on or 'none'}"


def make_run(setting: tuple[str, float], seed: int, method: str, on: str = "") -> dict:
    """One fine-tune: a method trained on an (attack, ε) setting, with the AdvAmd switches named in `on` (e.g. "MB")."""
    attack, eps = setting
    switches = {k: letter in on for k, letter in zip(("mediate", "aux_bn", "advamd_loss"), "MBL")}
    return {"attack": attack, "eps": eps, "steps": TRAIN_STEPS[attack], "seed": seed, "method": method, **switches}


def defense_run(seed: int, method: str) -> dict:
    """One run of a defense that trains without an attack (Table 1's Def-Distill and MagNet): no attack settings."""
    return {"seed": seed, "method": method}


def plan(profile: dict, vary: dict | None = None) -> list[dict]:
    """Return every fine-tune run of a profile, most telling first, so a stopped protocol has the key rows.

    (a) vanilla, (b) Adv-Train and (c) AdvAmd at the first setting for every seed; then the profile's `defenses`
    (Table 1's other rows, no attack in training: Def-Distill; MagNet, whose autoencoder defends the same-seed control)
    for every seed; then (b) and (c) at the other settings, the other Table 3 rows at the first setting and at the
    others (seed 0). With `vary` (settings to override), only (c) at the first setting with those settings, and the
    control, for each seed.
    """
    first, *others = profile["train"]
    others.sort(key=lambda s: (s[1], s[0]))  # the smaller budget first
    if vary:
        return [
            run
            for seed in profile["seeds"]
            for run in (
                make_run(first, seed, "vanilla"),
                {**make_run(first, seed, "advamd", "MBL"), **vary, "vary": vary},
            )
        ]
    runs = [
        r
        for seed in profile["seeds"]
        for r in (
            make_run(first, seed, "vanilla"),
            make_run(first, seed, "advtrain"),
            make_run(first, seed, "advamd", "MBL"),
        )
    ]
    runs += [defense_run(seed, m) for seed in profile["seeds"] for m in profile.get("defenses", ())]
    seed = profile["seeds"][0]
    runs += [make_run(s, seed, m, "MBL" if m == "advamd" else "") for s in others for m in ("advtrain", "advamd")]
    rows = TABLE3[:-1] if profile["ablations"] else ()  # the other Table 3 rows, on seed 0
    runs += [make_run(s, seed, "advamd", r) for s in (first, *others) for r in rows]
    return runs


def eval_eps(run: dict, profile: dict, vary: dict | None = None) -> list[float]:
    """The budgets a run is evaluated at: its own, or for a run trained without an attack (the control, Def-Distill,
    MagNet) every budget planned (a varied ε included)."""
    if METHODS[run["method"]].attacks:
        return [run["eps"]]
    return sorted({eps for _, eps in profile["train"]} | {(vary or {}).get("eps", profile["train"][0][1])})


def key(run: dict) -> str:
    """A run's identity in the results file."""
    attack = f"{run['attack']}-{run['eps']}" if METHODS[run["method"]].attacks else ""
    vary = "".join(f"/{k}={v}" for k, v in run.get("vary", {}).items())
    return f"{method_name(run)}/{attack}/seed{run['seed']}{vary}"


def study_key(label: str, seed: int) -> str:
    """A study run's identity in the results file (its arm is the record's profile)."""
    return f"{label}/seed{seed}"


def study_plan(records: list[dict], arms: dict = STUDY) -> list[tuple[str, str, int]]:
    """Return every (arm, method, seed) the study runs, given what is recorded: seed 0 of every arm first (the
    screen), then seeds 1 and 2 of the arm's `confirm` methods and of every method whose seed-0 Δ benign is above
    SCREEN_BAR, with their vanilla runs; an arm with `screen: False` runs every method at its `seeds` instead."""
    runs = [(arm, label, 0) for arm, a in arms.items() for label in a["methods"]]
    screen = screen_deltas(records, arms)
    for arm, a in arms.items():
        if not a.get("screen", True):
            runs += [(arm, label, seed) for seed in a.get("seeds", (0,)) if seed for label in a["methods"]]
            continue
        chosen = set(a.get("confirm", ()))
        chosen |= {x for (at, label), d in screen.items() if at == arm and d > SCREEN_BAR for x in (label, "vanilla")}
        runs += [(arm, label, seed) for seed in (1, 2) for label in a["methods"] if label in chosen]
    return runs


def screen_deltas(records: list[dict], arms: dict) -> dict[tuple[str, str], float]:
    """The seed-0 Δ benign of every recorded (arm, method) of `arms` against the arm's seed-0 vanilla run."""
    benign = {(e["profile"], e["key"]): e["map"]["benign"] for e in records}
    return {
        (arm, label): b - control
        for arm, a in arms.items()
        for label in a["methods"]
        if label != "vanilla"
        and (control := benign.get((arm, study_key("vanilla", 0)))) is not None
        and (b := benign.get((arm, study_key(label, 0)))) is not None
    }


def capacity_arm(records: list[dict]) -> dict:
    """Return {"capacity": arm} once every study arm's seed 0 is recorded, else {}: CAPACITY in the arm and with the
    method that came closest to a lift on that screen (the largest seed-0 Δ benign), against a vanilla run.

    The rule was fixed before the scratch, scarce and later retrain screens were seen. The arm keeps its recipe; its
    start is scaled: yolov8s.yaml for yolov8n.yaml, or an M_T of CAPACITY trained as the profile's (`train_target`).
    """
    screen = {run: d for run, d in screen_deltas(records, STUDY).items() if run not in ROUND_2}
    if len(screen) < sum(len(a["methods"]) - 1 for a in STUDY.values()) - len(ROUND_2):  # every method but vanilla
        return {}
    (arm, label), delta = max(screen.items(), key=lambda kv: kv[1])
    a = STUDY[arm]
    yaml_start = a["start"].endswith(".yaml")
    start = a["start"].replace("yolov8n", CAPACITY) if yaml_start else f"{a['start']}-{CAPACITY}"
    origin = "from scratch" if yaml_start else f"from an M_T of {CAPACITY} trained as the {a['start']} profile's"
    about = (
        f"{CAPACITY} {origin}, in the `{arm}` arm with {label}, the closest to a lift on the screen (seed 0: "
        f"Δ benign {delta:+.2f}); {a['about']}"
    )
    return {
        "capacity": {
            "about": about,
            "start": start,
            "recipe": a["recipe"],
            "methods": {"vanilla": VANILLA, label: a["methods"][label]},
        }
    }


def study_arms(records: list[dict], names: list[str] | None = None) -> dict:
    """The arms to run or report: those named (study or task arms), or every study arm; with `capacity` once defined."""
    every = {**ARMS, **capacity_arm(records)}
    if missing := [n for n in names or () if n not in every]:
        raise ValueError(
            f"arm {missing[0]!r} is not defined yet: the capacity arm is chosen once every other study "
            f"arm's seed 0 is recorded; run --study without arm names first"
        )
    return {n: every[n] for n in names} if names else {n: a for n, a in every.items() if n not in TASKS}


def start_weights(start: str) -> Path | None:
    """The kept M_T an arm starts from, docs/results/targets/<start>.pt ("full", or "full-yolov8s" for M_T of the
    full profile trained at another scale), or None for a model YAML (from scratch)."""
    return None if start.endswith(".yaml") else paths.TARGETS / f"{start}.pt"


def study_budgets(a: dict, label: str) -> list[float]:
    """The ε a run of arm `a` is attacked at on val: its own, or every ε of its arm for the vanilla run."""
    own = a["methods"][label].get("eps")
    return [own] if own else sorted({m["eps"] for m in a["methods"].values() if m.get("eps")})


def study_settings(a: dict, label: str, seed: int) -> dict:
    """The training settings of one run of arm `a` (on top of SCHEDULE), without where it is written."""
    kept = start_weights(a["start"])
    method = a["methods"][label]
    steps = {"steps": TRAIN_STEPS[method["attack"]]} if "attack" in method else {}
    return {"model": str(kept) if kept else a["start"], **a["recipe"], **method, **steps, "seed": seed}


def check_study() -> None:
    """Check every study run's settings before any work: a bad key or value fails at once, naming it."""
    from yolo_advamd.cfg import resolve_advamd_cfg

    for arm, a in ARMS.items():
        for label in a["methods"]:
            settings = {k: v for k, v in study_settings(a, label, 0).items() if k != "model"}
            try:
                resolve_advamd_cfg(settings)
            except (SyntaxError, ValueError) as e:
                raise ValueError(f"study arm {arm!r}, method {label!r}: {e}") from e
