"""The configuration to recommend from the study's records, by rules fixed before the confirmation seeds ran: a lift
(`lift`) if one is measured, else the robust method with the least benign cost; written to `hyps/recommended.yaml`."""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from . import paths
from .arms import TASKS
from .plans import study_arms
from .records import control


def recommendable(records: list[dict]) -> dict:
    """The arms the rule chooses from: every study arm, and the task arms (round 2's classification arm, 3 seeds)."""
    return {**study_arms(records), **TASKS}


def recommend(records: list[dict]) -> tuple[str, str, str] | None:
    """Choose the configuration to recommend, by the rule fixed before the confirmation seeds ran.

    Restated for round 2 on 2026-12-07, before its runs: a lift is a mean Δ more than one standard deviation above 0
    over 3 seeds on benign mAP *or* on mPC (the corruption benchmark's mean over corruptions and severities), with no
    loss beyond the spread on the other (its mean Δ not more than one standard deviation below 0).

    1. A lift (`lift`): the largest mean Δ among the methods with one, on benign mAP or on mPC.
    2. Otherwise robustness at the least benign cost: among the methods whose mean Δ FGSM is above 0 (robustness
       gained against the vanilla run, at the ε they trained with), the largest mean Δ benign, preferring methods
       measured over 3 seeds; ties by the larger Δ FGSM.

    Returns:
        (tuple | None): (arm, method, the reason in words), or None before any study run is recorded.
    """
    rows, lifts = [], []
    for arm, a in recommendable(records).items():
        for label in a["methods"]:
            if (d := deltas(records, arm, label))["benign"]:
                b, f = d["benign"], d["fgsm"]
                rows.append((arm, label, len(b), statistics.mean(b), statistics.mean(f) if f else float("nan")))
                lifts += [(statistics.mean(d[k]), arm, label, why) for k in ("benign", "mpc") if (why := lift(d, k))]
    if lifts:
        _, arm, label, why = max(lifts)
        return arm, label, why
    robust = [r for r in rows if r[4] > 0]
    if not robust:
        return None
    arm, label, n, mean, fgsm = max(robust, key=lambda r: (r[2] >= 3, r[3], r[4]))
    return (
        arm,
        label,
        (
            f"no lift anywhere yet; of the methods that gain robustness (Δ FGSM > 0) it has the best Δ "
            f"benign: {mean:+.2f}, Δ FGSM {fgsm:+.2f} over {n} seed(s)"
        ),
    )


def lift(d: dict, key: str) -> str:
    """Say whether the per-seed Δ `d[key]` (`benign` or `mpc`) is a lift by the round-2 rule, in words, or "": a mean
    more than one standard deviation above 0 over at least 3 seeds, with the other's mean Δ not more than one standard
    deviation below 0 (where it is measured over 2 seeds or more)."""
    v, other = d[key], d["mpc" if key == "benign" else "benign"]
    if len(v) < 3 or statistics.mean(v) <= statistics.stdev(v):
        return ""
    name, other_name = {"benign": ("a benign", "mPC"), "mpc": ("an mPC", "benign")}[key]
    if len(other) < 2:
        checked = f"{other_name} not measured over 2 seeds"
    elif (mo := statistics.mean(other)) < -(so := statistics.stdev(other)):
        return ""
    else:
        checked = f"{other_name} {mo:+.2f} ± {so:.2f}"
    return (
        f"{name} lift of {statistics.mean(v):+.2f} ± {statistics.stdev(v):.2f} over {len(v)} seeds, the largest "
        f"measured ({checked})"
    )


def deltas(records: list[dict], arm: str, label: str) -> dict:
    """The per-seed Δ of a study method vs the same-seed vanilla run: `benign`, `fgsm` and `pgd` (at its own ε), and
    `mpc` and `rpc` (under corruptions, where both have a corruption map)."""
    from yolo_advamd.validate import column_name

    runs = [e for e in records if e["profile"] == arm and e["key"] != "start"]
    out = {"benign": [], "fgsm": [], "pgd": [], "mpc": [], "rpc": []}
    for e in (e for e in runs if e["name"] == label != "vanilla"):
        if c := control(runs, e):
            out["benign"].append(e["map"]["benign"] - c["map"]["benign"])
            if "corruption" in e and "corruption" in c:
                out["mpc"].append(e["corruption"]["mPC"] - c["corruption"]["mPC"])
                out["rpc"].append(e["corruption"]["rPC"] - c["corruption"]["rPC"])
            for attack in ("fgsm", "pgd"):
                col = column_name(attack, e["eps"]) if e.get("eps") else None
                if col in e["map"] and col in c["map"]:
                    out[attack].append(e["map"][col] - c["map"][col])
    return out


def write_recommended(a: dict, arm: str, label: str, why: str) -> None:
    """Write `hyps/recommended.yaml`: the settings of method `label` of arm `a`, with where they were measured and
    why."""
    settings = {**a["methods"][label]}
    recipe = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in a["recipe"].items())
    header = (
        f"# Recommended by benchmarks/reproduce.py (rule: `recommend`) from docs/results/results.jsonl:\n"
        f"# {label} in the study's `{arm}` regime ({a['about']}),\n# chosen for {why}.\n"
        f"# Regime on {Path(a.get('data', 'data/digits-det.yaml')).stem}: {recipe}; see docs/RESULTS.md.\n"
    )
    paths.RECOMMENDED.write_text(header + yaml.safe_dump(settings, sort_keys=False))
