"""Does AdvAmd work? The paper's comparisons (Tables 1 and 3) on the embedded digits-det data, resumable.

    python benchmarks/reproduce.py --quick          # (a) vanilla, (b) Adv-Train, (c) AdvAmd at FGSM eps=0.01, then a
                                                    # segmentation and a classification row (vanilla vs AdvAmd)
    nohup python benchmarks/reproduce.py &          # the full protocol (hours): runs append to docs/results/results.jsonl,
                                                    # finished runs are skipped, so it resumes where it stopped
    python benchmarks/reproduce.py --report         # only regenerate docs/RESULTS.md and the plot from the results file
    python benchmarks/reproduce.py --bench          # also run the step-cost and attack-speed benchmarks: one command
                                                    # refreshes every number in docs/RESULTS.md
    python benchmarks/reproduce.py --quick --vary beta3=0.5 abar_norm=none   # (c) AdvAmd with other settings, as a
                                                    # row of its own against the same control ("what we tried")
    python benchmarks/reproduce.py --quick --seeds 0 1 2                     # (a), (b), (c) over three seeds
    nohup python benchmarks/reproduce.py --study &  # where does adversarial training lift benign mAP? six arms, hours
    python benchmarks/reproduce.py --quick --fresh  # run a profile anew (a fresh clone has no quick M_T): its
                                                    # records move to docs/results/archive/, out of the report

Protocol: train a target M_T (yolov8n, 160 px) from scratch, fine-tune it with every method for the same epochs
under one fixed schedule (AdamW, fixed lr0, no warmup, no mosaic, no gradient accumulation, same seed), then measure
benign and white-box adversarial mAP50-95 on val with `validate_advamd`. Every run is one JSON line; a run evaluated
at a budget added later is recorded again with the new columns (the last line of a run wins).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections import ChainMap
from contextlib import nullcontext
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "results.jsonl"
REPORT = ROOT / "docs" / "RESULTS.md"
PLOT = ROOT / "docs" / "results" / "benign_vs_adv.png"
BENCH = ROOT / "docs" / "results" / "benchmarks.txt"  # the last --bench output, kept in every report
RECOMMENDED = ROOT / "hyps" / "recommended.yaml"  # written from the study's records by `recommend`
DISCUSSION = ROOT / "docs" / "results" / "discussion.md"  # hand-written reading of the numbers, kept in every report
TARGETS = ROOT / "docs" / "results" / "targets"  # each profile's M_T, kept in the repository: a fresh machine resumes
TABLE3 = ("M", "B", "L", "MB", "ML", "BL", "MBL")  # the paper's rows: M = mediate, B = aux BN, L = AdvAmd loss
SCHEDULE = {  # one schedule for every method (see shared/ULTRALYTICS-FACTS.md: auto optimizer, nbs, close_mosaic)
    "optimizer": "AdamW",
    "warmup_epochs": 0,
    "nbs": 16,
    "batch": 16,
    "imgsz": 160,
    "workers": 0,
    "deterministic": False,  # seeded, but deterministic kernels made CPU steps ~3x slower here
    "plots": False,
    "exist_ok": True,
    "verbose": False,
}
TRAIN_STEPS = {"fgsm": 1, "pgd": 3}  # PGD-3 in training, step size 2.5 * eps / 3: PGD-10 would cost ~15x stock steps
EVAL_STEPS = 3  # PGD steps on val
HEADLINE = {"detect": "metrics/mAP50-95(B)", "segment": "metrics/mAP50-95(M)", "classify": "metrics/accuracy_top1"}
PROFILES = {  # 1,000 scenes and 2 fine-tune epochs: one run takes minutes on 2 CPU cores
    "quick": {"target_epochs": 8, "fraction": 0.5, "ft_epochs": 2, "seeds": (0,), "train": [("fgsm", 0.01)],
              "ablations": False},
    "full": {"target_epochs": 30, "fraction": 0.5, "ft_epochs": 2, "seeds": (0, 1, 2),
             "train": [("fgsm", 0.01), ("fgsm", 0.1), ("pgd", 0.01), ("pgd", 0.1)], "ablations": True},
}  # fmt: skip


def method_name(s: dict) -> str:
    """Name a run's method: vanilla, advtrain, advamd, or the ablation row (M = mediate, B = aux BN, L = AdvAmd loss)."""
    if s["method"] != "advamd":
        return s["method"]
    on = "".join(k for k, v in zip("MBL", (s["mediate"], s["aux_bn"], s["advamd_loss"])) if v)
    return "advamd" if on == "MBL" else f"ablation-{on or 'none'}"


def target_recipe(profile: dict) -> dict:
    """How a profile's M_T is trained from scratch (on top of SCHEDULE): its length, data, lr0 and mosaic."""
    epochs = profile["target_epochs"]
    return {"epochs": epochs, "fraction": profile["fraction"], "lr0": 0.002, "close_mosaic": max(2, epochs // 6)}


def make_run(setting: tuple[str, float], seed: int, method: str, on: str = "") -> dict:
    """One fine-tune: a method trained on an (attack, ε) setting, with the AdvAmd switches named in `on` (e.g. "MB")."""
    attack, eps = setting
    switches = {k: letter in on for k, letter in zip(("mediate", "aux_bn", "advamd_loss"), "MBL")}
    return {"attack": attack, "eps": eps, "steps": TRAIN_STEPS[attack], "seed": seed, "method": method, **switches}


def plan(profile: dict, vary: dict | None = None) -> list[dict]:
    """Return every fine-tune run of a profile, most telling first, so a stopped protocol has the key rows.

    (a) vanilla, (b) Adv-Train and (c) AdvAmd at the first setting for every seed; then (b) and (c) at the other
    settings, the other Table 3 rows at the first setting and at the others (seed 0). With `vary` (settings to
    override), only (c) at the first setting with those settings, and the control, for each seed.
    """
    first, *others = profile["train"]
    others.sort(key=lambda s: (s[1], s[0]))  # the smaller budget first
    if vary:
        return [run for seed in profile["seeds"] for run in (
            make_run(first, seed, "vanilla"), {**make_run(first, seed, "advamd", "MBL"), **vary, "vary": vary})]  # fmt: skip
    runs = [r for seed in profile["seeds"] for r in (
        make_run(first, seed, "vanilla"), make_run(first, seed, "advtrain"), make_run(first, seed, "advamd", "MBL"))]  # fmt: skip
    seed = profile["seeds"][0]
    runs += [make_run(s, seed, m, "MBL" if m == "advamd" else "") for s in others for m in ("advtrain", "advamd")]
    rows = TABLE3[:-1] if profile["ablations"] else ()  # the other Table 3 rows, on seed 0
    runs += [make_run(s, seed, "advamd", r) for s in (first, *others) for r in rows]
    return runs


def eval_eps(run: dict, profile: dict, vary: dict | None = None) -> list[float]:
    """The budgets a run is evaluated at: its own, or for the control every budget planned (a varied ε included)."""
    if run["method"] != "vanilla":
        return [run["eps"]]
    return sorted({eps for _, eps in profile["train"]} | {(vary or {}).get("eps", profile["train"][0][1])})


def key(run: dict) -> str:
    """A run's identity in the results file."""
    attack = "" if run["method"] == "vanilla" else f"{run['attack']}-{run['eps']}"
    vary = "".join(f"/{k}={v}" for k, v in run.get("vary", {}).items())
    return f"{method_name(run)}/{attack}/seed{run['seed']}{vary}"


def attack_label(attack: str, steps: int | None = None) -> str:
    """Name a training attack with its steps where it has several: "fgsm", "pgd-3"."""
    return attack if attack == "fgsm" else f"{attack}-{steps or TRAIN_STEPS[attack]}"


def trained_on(e: dict) -> str:
    """The training setting of a recorded run, for the report: attack, ε and any varied settings."""
    if e["name"] == "vanilla":
        return "—"
    attack = attack_label(e["attack"], e.get("steps"))
    varied = (f"{k}={v}" for k, v in e.get("vary", {}).items() if k not in {"attack", "eps"})  # those are named first
    return " ".join([f"{attack} ε={e['eps']}", *varied])


def load() -> list[dict]:
    """Return the recorded runs, the last record of each (profile, key): a run evaluated at more budgets is recorded
    again."""
    lines = RESULTS.read_text().splitlines() if RESULTS.exists() else []
    return list({((e := json.loads(line))["profile"], e["key"]): e for line in lines if line.strip()}.values())


def record(entry: dict) -> None:
    """Append one finished run to the results file, with the commit of the code that made it."""
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({**entry, "commit": git.stdout.strip() or None}) + "\n")


def evaluate(weights: Path, data: str, eps: list[float], name: str, imgsz: int = 160, attack_model: Path | None = None,
             shifted: bool = False) -> dict:  # fmt: skip
    """Benign and FGSM/PGD scores (%) of `weights` at the budgets `eps`, per table column: mAP50-95 (a segmentation
    model's mask mAP50-95, a classifier's top-1 accuracy); attacks on `attack_model` instead when one is given, made
    with every object's class moved to the next one when `shifted` (a detector's; benchmarks/label_leak.py)."""
    from label_leak import shifted_labels
    from yolo_advamd.validate import validate_advamd

    with shifted_labels() if shifted else nullcontext():
        res = validate_advamd(str(weights), data, attacks="fgsm,pgd", eps=eps, steps=EVAL_STEPS, imgsz=imgsz,
                              attack_model=attack_model and str(attack_model),
                              project=str(ROOT / "runs" / "reproduce-val"), name=name, exist_ok=True)  # fmt: skip
    return headline_scores(res)


def evaluate_corruptions(weights: Path, data: str, name: str, imgsz: int = 160) -> dict:
    """Scores (%) of `weights` on val under the COCO-C benchmark's 15 common corruptions × severities 1-5, per table
    column (`benign`, one per corrupted set, `mPC`, `rPC`), the headline score as in `evaluate`."""
    from yolo_advamd.validate import validate_advamd

    res = validate_advamd(str(weights), data, attacks="", corruptions="common", imgsz=imgsz,
                          project=str(ROOT / "runs" / "reproduce-val"), name=name, exist_ok=True)  # fmt: skip
    return headline_scores(res)


def headline_scores(res: dict) -> dict:
    """The model's headline score (`HEADLINE`, %) per column of a `validate_advamd` result."""
    return {col: 100 * s[HEADLINE[res["task"]]] for col, s in res["rows"][0]["stats"].items()}


def stored(weights: Path) -> str:
    """The path recorded for `weights`: relative to the repository when inside it, so a clone elsewhere finds it."""
    return str(weights.relative_to(ROOT)) if weights.is_relative_to(ROOT) else str(weights)


def on_disk(recorded: str) -> Path:
    """The file a recorded path names on this machine: relative to the repository, or an absolute path written by
    an older version on another machine, found again under this repository's `runs/` or `docs/` when it moved."""
    path = Path(recorded)
    if not path.is_absolute():
        return ROOT / path
    for top in ("runs", "docs"):
        if not path.exists() and top in path.parts:
            return ROOT.joinpath(*path.parts[path.parts.index(top) :])
    return path


def complete(entry: dict, eps: list[float], data: str) -> dict:
    """Evaluate a recorded run at the budgets it lacks (the control of a newly planned ε), record and return it."""
    from yolo_advamd.validate import column_name

    if missing := [e for e in eps if column_name("fgsm", e) not in entry["map"]]:
        if not (weights := on_disk(entry["weights"])).is_file():  # fine-tune weights stay in runs/, on one machine
            print(f"reproduce.py: {entry['key']} lacks ε = {missing} and its weights {weights} are gone: left as is")
            return entry
        name = f"{entry['profile']}-{entry['key'].replace('/', '_')}"
        entry = {**entry, "map": {**evaluate(weights, data, missing, name), **entry["map"]}}
        record(entry)
    return entry


def archive(profile_name: str) -> Path | None:
    """Move a profile's records (and its kept M_T) to docs/results/archive/, so the profile runs anew; return where."""
    lines = RESULTS.read_text().splitlines() if RESULTS.exists() else []
    old = [line for line in lines if line.strip() and json.loads(line)["profile"] == profile_name]
    if not old:
        return None
    folder = RESULTS.parent / "archive"
    folder.mkdir(parents=True, exist_ok=True)
    dest = next(d for n in itertools.count(1) if not (d := folder / f"{profile_name}-{n}.jsonl").exists())
    dest.write_text("\n".join(old) + "\n")  # written before the results file drops them: nothing is lost
    if (target := TARGETS / f"{profile_name}.pt").is_file():
        shutil.move(target, dest.with_suffix(".pt"))
    kept = RESULTS.with_suffix(".tmp")
    kept.write_text("".join(f"{line}\n" for line in lines if line.strip() and line not in old))
    kept.replace(RESULTS)
    return dest


def train(overrides: dict) -> tuple[Path, float]:
    """Train with the AdvAmd trainer of the model's task, or resume the interrupted run of the same name; return best.pt
    and its training time.

    The time is Ultralytics' own per-epoch clock in results.csv (training and per-epoch validation), summed over the
    pieces of a resumed run.
    """
    from ultralytics.utils.patches import torch_load

    from yolo_advamd.trainer import advamd_trainer

    run = Path(overrides["project"]) / overrides["name"]
    last = run / "weights" / "last.pt"
    if not last.is_file():
        trainer = advamd_trainer({**SCHEDULE, **overrides})
    elif torch_load(last, map_location="cpu").get("epoch", -1) != -1:  # stopped mid-run: continue it
        print(f"reproduce.py: resuming {run} from {last}")
        trainer = advamd_trainer({"resume": str(last)})
    else:  # finished, but stopped before it was recorded
        return run / "weights" / "best.pt", train_seconds(run / "results.csv")
    trainer.train()
    return trainer.best, train_seconds(run / "results.csv")


def epoch_seconds(results_csv: Path) -> list[float]:
    """Each epoch's wall time from a run's results.csv `time` column (cumulative per process, restarted by a resume)."""
    with open(results_csv) as f:
        times = [float(row["time"]) for row in csv.DictReader(f, skipinitialspace=True)]
    return [t - before if t > before else t for before, t in zip([0.0, *times[:-1]], times)]


def train_seconds(results_csv: Path) -> float:
    """Training time of a run, summed over the pieces of a resumed run."""
    return sum(epoch_seconds(results_csv))


def run_protocol(profile_name: str, vary: dict | None = None, seeds: list[int] | None = None) -> None:
    """Train M_T if needed, then every planned run not yet recorded, appending each as it finishes."""
    import yolo_advamd  # noqa: F401
    from yolo_advamd.cli import use_all_cores
    from yolo_advamd.data import resolve_dataset

    use_all_cores()
    profile = {**PROFILES[profile_name], **({"seeds": tuple(seeds)} if seeds else {})}
    data = resolve_dataset(str(ROOT / "data" / "digits-det.yaml"))
    project = str(ROOT / "runs" / f"reproduce-{profile_name}")
    done = {e["key"]: e for e in load() if e["profile"] == profile_name}
    budgets = sorted({eps for _, eps in profile["train"]})
    if "target" not in done:
        kept = TARGETS / f"{profile_name}.pt"
        trained = train_target("yolov8n.yaml", profile_name, data, project, "target", kept)
        done["target"] = {"key": "target", "profile": profile_name, "weights": stored(kept), **trained,
                          "map": evaluate(kept, data, budgets, f"{profile_name}-target")}  # fmt: skip
        record(done["target"])
    target = str(on_disk(done["target"]["weights"]))
    if not Path(target).is_file():
        raise FileNotFoundError(
            f"the recorded M_T of profile {profile_name!r} ({target}) is not on disk, and every recorded fine-tune "
            f"started from it: restore it there, or add --fresh to run the profile anew (its records are archived)"
        )
    done["target"] = complete(done["target"], budgets, data)
    for run in plan(profile, vary):
        if (k := key(run)) in done:
            done[k] = complete(done[k], eval_eps(run, profile, vary), data)
            continue
        name = k.replace("/", "_")
        settings = {k: v for k, v in run.items() if k != "vary"}
        weights, seconds = train({"model": target, "data": data, "epochs": profile["ft_epochs"], "lr0": 0.0005,
                                  "close_mosaic": profile["ft_epochs"], "fraction": profile["fraction"],
                                  "attack_model": "target", "abar_batches": 10, "project": project, "name": name,
                                  **settings})  # fmt: skip
        done[k] = {"key": k, "profile": profile_name, **run, "name": method_name(run), "train_seconds": seconds,
                   "weights": stored(weights), "map": evaluate(weights, data, eval_eps(run, profile, vary), f"{profile_name}-{name}")}  # fmt: skip
        record(done[k])
        report()

# The study: where does adversarial training lift benign mAP? Each arm's settings were fixed before any of its results
# were seen; a setting changed afterwards gets a new method label, and both rows are kept. Every run trains on top of
# SCHEDULE, is compared with the arm's vanilla run of the same seed, and is attacked on val with FGSM and PGD-3 at the
# ε it trained with (the vanilla run at every ε of its arm).
M_T_RECIPE = target_recipe(PROFILES["full"])  # 30 epochs, lr0 0.002, close_mosaic 5
M_T_FINAL_LR = M_T_RECIPE["lr0"] * ((1 - 29 / 30) * (1 - 0.01) + 0.01)  # Ultralytics' linear decay to lrf = 0.01
FGSM = {"attack": "fgsm", "eps": 0.01}
WEAK = {"attack": "fgsm", "eps": 1 / 255}  # AdvProp's regime: a weak attack
AMD = {"method": "advamd", "abar_scope": "positive"}  # the paper's Ā loss: the true-class term of each object
AUX_ONLY = {"method": "advamd", "mediate": False, "advamd_loss": False}  # Table 3's row B: the auxiliary BN alone
VANILLA = {"method": "vanilla"}
# a run's scores on attacks made on its arm's M_T, by record map: with the true labels (`transfer`), and with every
# object's class moved to the next one (`leak`: a model that reads the labels off M_T's perturbations falls there)
THROUGH_TARGET = {"transfer": False, "leak": True}
MPC_NOTE = (" Δ mPC: the same under common corruptions, the COCO-C benchmark's mPC (mAP50-95 averaged over its 15 "
            "corruptions × severities 1-5 of val, `val_advamd.py corruptions=common`); the vanilla row gives its "
            "absolute mPC.")  # in the report once a run has a corruption map
STUDY = {
    "retrain": {
        "about": "the paper's regime: M_T retrained with its own recipe and length (30 epochs), attacks on M_T",
        "start": "full",
        "recipe": M_T_RECIPE,
        "methods": {
            "vanilla": VANILLA,
            "advamd": {**AMD, **FGSM, "attack_model": "target"},
            "advamd ε=1/255": {**AMD, **WEAK, "attack_model": "target"},
            "aux-BN only": {**AUX_ONLY, **FGSM, "attack_model": "target"},
            "advtrain": {"method": "advtrain", **FGSM, "attack_model": "target"},
            "advamd abar_scope=all": {**AMD, **FGSM, "abar_scope": "all", "attack_model": "target"},
            "advamd current": {**AMD, **FGSM, "attack_model": "current"},
            # round 2 (2026-12-07), fixed before its runs: which view carries the label leak (AdvAmd without the
            # mediate view); Adv-Train and `advamd current` get seeds 1 and 2 whatever their screen
            "advamd mediate=False": {**AMD, **FGSM, "mediate": False, "attack_model": "target"},
            # round 2: Kurakin et al.'s remedy for label leaking, M_T attacked on its own detections, not the labels
            "advamd attack_labels=pred": {**AMD, **FGSM, "attack_model": "target", "attack_labels": "pred"},
        },
        "confirm": ("vanilla", "advamd", "advtrain", "advamd current"),
        # added after the seed-0 rows: every run is also attacked through M_T, the perturbations the `target` rows
        # train on (THROUGH_TARGET; measurements only, no run's settings change)
        "transfer": True,
    },
    "scratch": {
        "about": "AdvProp's regime: from scratch with M_T's recipe, FGSM ε = 1/255 on the current model",
        "start": "yolov8n.yaml",
        "recipe": M_T_RECIPE,
        "methods": {
            "vanilla": VANILLA,
            "advamd": {**AMD, **WEAK, "attack_model": "current"},  # ran with 0.2's Ā (see the cls arm)
            "detadvprop": {"method": "detadvprop", **WEAK},
            # added after 0.3 fixed Ā for classes with no benign-correct object, which a model from scratch has
            "advamd (Ā of 0.3)": {**AMD, **WEAK, "attack_model": "current"},
        },
    },
    "scarce": {
        "about": "from scratch on 10 % of the scenes (200) for 150 epochs, as many image passes as M_T, FGSM ε = 1/255 "
        "on the current model",
        "start": "yolov8n.yaml",
        "recipe": {"epochs": 150, "fraction": 0.1, "lr0": 0.002, "close_mosaic": 25, "patience": 150},
        "methods": {
            "vanilla": VANILLA,
            "advamd": {**AMD, **WEAK, "attack_model": "current"},
            "detadvprop": {"method": "detadvprop", **WEAK},
        },
    },
    "lr-matched": {
        "about": "the 2-epoch fine-tune of the full profile, with lr0 the rate M_T ended at",
        "start": "full",
        "recipe": {"epochs": 2, "fraction": 0.5, "lr0": M_T_FINAL_LR, "close_mosaic": 2, "abar_batches": 10},
        "methods": {
            "vanilla": VANILLA,
            "advamd": {**AMD, **FGSM, "attack_model": "target"},
            "advamd abar_scope=all": {**AMD, **FGSM, "abar_scope": "all", "attack_model": "target"},
            "aux-BN only": {**AUX_ONLY, **FGSM, "attack_model": "target"},
        },
    },
    "teacher": {
        "about": "UDFA from M_T for 12 epochs (its published 1x fine-tune) with M_T's recipe",
        "start": "full",
        "recipe": {**M_T_RECIPE, "epochs": 12, "close_mosaic": 2},
        "methods": {"vanilla": VANILLA, "udfa": {"method": "udfa", "attack": "fgsm", "eps": 2 / 255}},  # UDFA: 2/255 steps
    },
}
TASKS = {  # AdvAmd on the paper's other tasks vs a vanilla run of the same length, no screen: seed 0, or the arm's
    # `seeds` for every method (--quick: quick-*)
    "quick-seg": {
        "about": "yolov8n-seg from scratch on digits-seg, M_T's quick recipe, FGSM ε = 0.01 on the current model; "
        "score: mask mAP50-95",
        "start": "yolov8n-seg.yaml",
        "data": "data/digits-seg.yaml",
        "recipe": {**target_recipe(PROFILES["quick"])},
        "methods": {"vanilla": VANILLA, "advamd": {**AMD, **FGSM, "attack_model": "current"}},
        "screen": False,
    },
    "quick-cls": {
        "about": "yolov8n-cls from scratch on digits-cls at 32 px, M_T's quick recipe, FGSM ε = 0.01 on the current "
        "model; score: top-1 accuracy",
        "start": "yolov8n-cls.yaml",
        "data": "data/digits-cls.yaml",
        "recipe": {**target_recipe(PROFILES["quick"]), "imgsz": 32},
        "methods": {"vanilla": VANILLA, "advamd": {**AMD, **FGSM, "attack_model": "current"}},
        "screen": False,
    },
    "cls": {  # quick-cls stays at chance (10.8 %): this recipe was chosen on a vanilla run alone (81.8 %), before AdvAmd
        "about": "yolov8n-cls from scratch on all of digits-cls at 32 px, M_T's full recipe (30 epochs) without the "
        "flips, RandAugment and erasing a 32 px digit does not survive (at lr0 0.002 the quick recipe's 8 epochs "
        "end before it learns), FGSM ε = 0.01 on the current model; score: top-1 accuracy",
        "start": "yolov8n-cls.yaml",
        "data": "data/digits-cls.yaml",
        "recipe": {**M_T_RECIPE, "fraction": 1.0, "imgsz": 32, "fliplr": 0.0, "auto_augment": None, "erasing": 0.0},
        "methods": {
            "vanilla": VANILLA,
            "advamd": {**AMD, **FGSM, "attack_model": "current"},  # ran with 0.2: an unmeasured class had Ā ≈ 0
            # added after `advamd` ended at chance with Ā = [0, 5, 0, ..., 0, 5]: the same settings with 0.3's Ā
            # (a class never benign-correct takes the measured mean), and without the Ā loss (Table 3's switch)
            "advamd (Ā of 0.3)": {**AMD, **FGSM, "attack_model": "current"},
            "advamd advamd_loss=False": {**AMD, **FGSM, "attack_model": "current", "advamd_loss": False},
        },
        "screen": False,
    },
    # round 2 (2026-12-07): the criterion and the recipe fixed before any AdvAmd run, checked on vanilla alone and on
    # a stock ClassificationTrainer run of the same recipe (benchmarks/cls_recipe.py, seed 0, one thread each): the
    # two curves are identical, top-1 15.4, 53.6, 66.2, 77.4, 79.8 % at epochs 1-5 (criterion met), 97.0 % at 30
    "cls-r2": {
        "about": "AdvProp's own domain: yolov8n-cls from scratch on all of digits-cls at 32 px for 30 epochs without "
        "flips, RandAugment or erasing, as `cls`, at lr0 0.0005 (a quarter of `cls`'s), so that vanilla learns from "
        "the first epochs (the criterion, fixed first: vanilla top-1 above 50 % at epoch 5); FGSM ε = 0.01 on the "
        "current model; 3 seeds; score: top-1 accuracy",
        "start": "yolov8n-cls.yaml",
        "data": "data/digits-cls.yaml",
        "criterion": (5, 50.0),  # (epoch, top-1 %) vanilla must pass, checked by benchmarks/cls_recipe.py
        "recipe": {**M_T_RECIPE, "fraction": 1.0, "imgsz": 32, "fliplr": 0.0, "auto_augment": None, "erasing": 0.0,
                   "lr0": 0.0005},  # fmt: skip
        "methods": {
            "vanilla": VANILLA,
            "advamd": {**AMD, **FGSM, "attack_model": "current"},
            "aux-BN only": {**AUX_ONLY, **FGSM, "attack_model": "current"},  # AdvProp: benign + adversarial (aux BN)
            "advamd attack_labels=pred": {**AMD, **FGSM, "attack_model": "current", "attack_labels": "pred"},
        },
        "screen": False,
        "seeds": (0, 1, 2),
    },
}
ARMS = ChainMap(STUDY, TASKS)  # every arm defined in advance, by name
SCREEN_BAR = -0.5  # seed 0's Δ benign above this earns seeds 1 and 2
CAPACITY = "yolov8s"  # the `capacity` arm's model, one scale up from the study's yolov8n
ROUND_2 = {("retrain", "advamd mediate=False"), ("retrain", "advamd attack_labels=pred")}  # (arm, method) added after the capacity arm was chosen: not in its rule


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
    return {(arm, label): b - control for arm, a in arms.items() for label in a["methods"] if label != "vanilla"
            and (control := benign.get((arm, study_key("vanilla", 0)))) is not None
            and (b := benign.get((arm, study_key(label, 0)))) is not None}  # fmt: skip


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
    about = (f"{CAPACITY} {origin}, in the `{arm}` arm with {label}, the closest to a lift on the screen (seed 0: "
             f"Δ benign {delta:+.2f}); {a['about']}")  # fmt: skip
    return {"capacity": {"about": about, "start": start, "recipe": a["recipe"],
                         "methods": {"vanilla": VANILLA, label: a["methods"][label]}}}


def study_arms(records: list[dict], names: list[str] | None = None) -> dict:
    """The arms to run or report: those named (study or task arms), or every study arm; with `capacity` once defined."""
    every = {**ARMS, **capacity_arm(records)}
    if missing := [n for n in names or () if n not in every]:
        raise ValueError(f"arm {missing[0]!r} is not defined yet: the capacity arm is chosen once every other study "
                         f"arm's seed 0 is recorded; run --study without arm names first")  # fmt: skip
    return {n: every[n] for n in names} if names else {n: a for n, a in every.items() if n not in TASKS}


def start_weights(start: str) -> Path | None:
    """The kept M_T an arm starts from, docs/results/targets/<start>.pt ("full", or "full-yolov8s" for M_T of the
    full profile trained at another scale), or None for a model YAML (from scratch)."""
    return None if start.endswith(".yaml") else TARGETS / f"{start}.pt"


def train_target(model: str, profile: str, data: str, project: str, name: str, kept: Path) -> dict:
    """Train an M_T from scratch (`model`, seed 0) with `profile`'s target recipe and keep a copy at `kept`; return its
    training time and per-epoch curves (its val mAP shows the plateau, or not)."""
    weights, seconds = train({"model": model, "data": data, "method": "vanilla", "seed": 0,
                              **target_recipe(PROFILES[profile]), "project": project, "name": name})  # fmt: skip
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, kept)
    return {"train_seconds": seconds, **epoch_curves(weights.parents[1] / "results.csv")}


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


def run_study(names: list[str] | None = None) -> None:
    """Run the planned runs of the arms named (all study arms when none is) not yet recorded, appending each as it
    finishes; then measure the maps that runs recorded earlier lack (`added_scores`) while their weights exist."""
    import yolo_advamd  # noqa: F401
    from yolo_advamd.checkpoint import model_task
    from yolo_advamd.cli import use_all_cores

    use_all_cores()
    check_study()
    while True:
        records = load()
        done = {(e["profile"], e["key"]) for e in records}
        arms = study_arms(records, names)
        todo = [r for r in study_plan(records, arms) if (r[0], study_key(*r[1:])) not in done]
        if not todo:  # the capacity arm joins `arms` on the pass after the last screen run is recorded
            break
        arm, label, seed = todo[0]
        a = arms[arm]
        data = arm_data(a)
        if (kept := start_weights(a["start"])) and (arm, "start") not in done:  # the starting model, at the arm's ε
            trained = {}
            if not kept.is_file() and a["start"] not in PROFILES:  # a scaled M_T ("full-yolov8s"): trained once, kept
                profile, model = a["start"].split("-", 1)
                project = str(ROOT / "runs" / "study-targets")
                trained = train_target(f"{model}.yaml", profile, data, project, a["start"], kept)
            if kept.is_file():
                record({"key": "start", "profile": arm, "name": "M_T", "weights": stored(kept), "train_seconds": 0,
                        **trained, "map": evaluate(kept, data, study_budgets(a, "vanilla"), f"{arm}-start")})  # fmt: skip
        if kept and not kept.is_file():
            raise FileNotFoundError(f"study arm {arm!r} starts from {kept}, which is not on disk")
        settings = study_settings(a, label, seed)
        name = re.sub(r"[^\w.=-]+", "_", f"{label}_seed{seed}".replace("ε", "eps").replace("/", "-"))
        weights, seconds = train({**settings, "data": data, "project": str(ROOT / "runs" / f"study-{arm}"), "name": name})
        task = "detect" if kept else model_task({"model": a["start"]})  # every kept M_T is a detector
        curves = epoch_curves(weights.parents[1] / "results.csv", task)
        imgsz = settings.get("imgsz", SCHEDULE["imgsz"])
        model = {**settings, "model": stored(kept) if kept else a["start"]}
        entry = {"key": study_key(label, seed), "profile": arm, "name": label, "seed": seed, "settings": model,
                 "attack": settings.get("attack"), "eps": settings.get("eps"), "steps": settings.get("steps"),
                 "train_seconds": seconds, "machine": machine(), "weights": stored(weights), **curves,
                 "map": evaluate(weights, data, study_budgets(a, label), f"{arm}-{name}", imgsz)}  # fmt: skip
        record({**entry, **added_scores(entry, a)})
        report()
    for e in load():  # then runs recorded before their arm measured through M_T or corruptions, while their weights exist
        if e["profile"] in arms and e["key"] != "start" and (maps := added_scores(e, arms[e["profile"]])):
            record({**e, **maps})
    report()


def arm_data(a: dict) -> str:
    """The dataset of arm `a` (digits-det unless it names one), built on first use."""
    from yolo_advamd.data import resolve_dataset

    return resolve_dataset(str(ROOT / a.get("data", "data/digits-det.yaml")))


def target_scores(entry: dict, a: dict) -> dict:
    """For a run of an arm with `transfer`: the maps of THROUGH_TARGET it lacks, its FGSM/PGD scores on attacks made on
    the arm's M_T (not on the run itself); {} when there is nothing to measure."""
    kept = start_weights(a["start"])
    if not a.get("transfer") or not kept or not (missing := [m for m in THROUGH_TARGET if m not in entry]):
        return {}
    if not (weights := on_disk(entry["weights"])).is_file():
        print(f"reproduce.py: {entry['profile']} {entry['key']} lacks its {' and '.join(missing)} scores and its "
              f"weights {weights} are gone: left as is")  # fmt: skip
        return {}
    name = f"{entry['profile']}-{entry['key'].replace('/', '_')}"
    imgsz = entry["settings"].get("imgsz", SCHEDULE["imgsz"])
    eps = study_budgets(a, entry["name"])
    maps = {m: evaluate(weights, arm_data(a), eps, f"{name}-{m}", imgsz, kept, THROUGH_TARGET[m]) for m in missing}
    return {m: {col: v for col, v in scores.items() if col != "benign"} for m, scores in maps.items()}  # white-box's


def added_scores(entry: dict, a: dict) -> dict:
    """The maps a study run of arm `a` lacks: through M_T (`target_scores`), under corruptions (`corruption_scores`)."""
    return {**target_scores(entry, a), **corruption_scores(entry, a)}


def corruption_scores(entry: dict, a: dict) -> dict:
    """For a study run of arm `a` without one: its `corruption` map (`evaluate_corruptions`: mPC, rPC and the score
    per corrupted set); {} when it has one or its weights are gone."""
    if "corruption" in entry:
        return {}
    if not (weights := on_disk(entry["weights"])).is_file():
        print(f"reproduce.py: {entry['profile']} {entry['key']} lacks its corruption scores and its weights {weights} "
              "are gone: left as is")  # fmt: skip
        return {}
    name = f"{entry['profile']}-{entry['key'].replace('/', '_')}-corruption"
    imgsz = entry["settings"].get("imgsz", SCHEDULE["imgsz"])
    return {"corruption": evaluate_corruptions(weights, arm_data(a), name, imgsz)}


def epoch_curves(results_csv: Path, task: str = "detect") -> dict:
    """The val score (%, the task's `HEADLINE`), the benign training loss (its items, e.g. box + cls + dfl) and the
    wall seconds per epoch, from a run's results.csv."""
    with open(results_csv) as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    score = HEADLINE[task]
    views = {"train/med_loss", "train/adv_loss", "train/align_loss"}
    loss = [sum(float(v) for k, v in row.items() if k.startswith("train/") and k not in views) for row in rows]
    curve = [100 * float(row[score]) for row in rows]
    return {"curve": curve, "train_loss": loss, "epoch_seconds": epoch_seconds(results_csv)}


def lift_section(records: list[dict]) -> list[str]:
    """The study's report: one table, arm × method, of Δ benign, Δ FGSM and Δ PGD-3 vs the same-seed vanilla run."""
    lines = ["## Where does it lift?", "",
             "Each arm trains every method with the same recipe and length as its vanilla run; Δ = method − vanilla "
             "of the same seed, in mAP50-95 points on val (benign; FGSM and PGD-3 at the ε the method trained with). "
             "A lift needs a mean Δ benign more than one standard deviation above 0 over 3 seeds. `vs M_T`: benign "
             "mAP against the model the arm started from (the paper's comparison). `wall`: the median epoch (training "
             "and validation) as a ratio to the vanilla run's of the same seed, the median over seeds; a run timed on "
             "another machine than its vanilla run is compared with a vanilla run of the arm timed on its own (— when "
             "there is none: two machines of one kind ran the same recipe's epochs 2.0× apart). Other jobs "
             "shared the 2 cores at times and slowed some epochs several times over; a median epoch ignores them "
             "while they are under half of a run's epochs. Each record in the results file names the commit of the "
             "code that made it." + (MPC_NOTE if (mpc := any("corruption" in e for e in records)) else ""), "",
             "| arm | method | seeds | Δ benign | Δ FGSM | Δ PGD-3 |" + " Δ mPC |" * mpc
             + " vs M_T | wall × vanilla | verdict |", "|---|---|---|---|---|---|---|---|---|" + "---|" * mpc]  # fmt: skip
    notes, arms = [], study_arms(records)
    for arm, a in arms.items():
        entries = [e for e in records if e["profile"] == arm]
        start = next((e for e in entries if e["key"] == "start"), None)
        runs = [e for e in entries if e["key"] != "start"]
        controls = [e for e in runs if e["name"] == "vanilla"]
        if controls:
            benign = [c["map"]["benign"] for c in controls]
            mpcs = [c["corruption"]["mPC"] for c in controls if "corruption" in c]
            lines.append(f"| {arm} | vanilla (absolute) | {len(benign)} | {spread(benign)} | | | "
                         + f"{spread(mpcs) if mpcs else ''} | " * mpc
                         + (f"{statistics.mean(benign) - start['map']['benign']:+.2f}" if start else "") + " | 1.00 | |")
        for label in a["methods"]:
            pairs = [(e, c) for e in runs if e["name"] == label != "vanilla" and (c := control(runs, e))]
            if not pairs:
                continue
            d = deltas(records, arm, label)
            adv = [spread(d[attack], signed=True) if d[attack] else "" for attack in ("fgsm", "pgd")]
            vs = f"{statistics.mean(e['map']['benign'] for e, _ in pairs) - start['map']['benign']:+.2f}" if start else ""
            walls = [w for e, _ in pairs if (w := wall_ratio(e, runs)) is not None]
            wall = f"{statistics.median(walls):.2f}" if walls else "—"
            b = d["benign"]
            mean, sd = statistics.mean(b), (statistics.stdev(b) if len(b) > 1 else None)
            word = ("1 seed: no verdict" if sd is None else "above the spread (a lift needs 3 seeds)" if mean > sd
                    and len(b) < 3 else "**lift**" if mean > sd else "below" if mean < -sd
                    else "within the spread")  # fmt: skip
            lines.append(f"| {arm} | {label} | {len(b)} | {spread(b, signed=True)} | {adv[0]} | {adv[1]} | "
                         + f"{spread(d['mpc'], signed=True) if d['mpc'] else ''} | " * mpc + f"{vs} | {wall} | {word} |")
        notes.append(f"- `{arm}`: {a['about']}.")
        if a.get("transfer") and (line := through_target_note(runs, a)):
            notes.append("  " + line)
        if arm == "scarce" and (first := next((c for c in controls if c["seed"] == 0 and c.get("curve")), None)):
            notes.append("  " + overfit(first))
    if pick := recommend(records):
        arm, label, why = pick
        notes.append(f"\n**Recommended** (`hyps/recommended.yaml`, by the rule in `recommend`, fixed before the "
                     f"confirmation seeds ran): {label} in the `{arm}` regime: {why}.")  # fmt: skip
        write_recommended(arms[arm], arm, label, why)
    return lines + ["", *notes, ""]


def through_target_note(runs: list[dict], a: dict) -> str:
    """One line on an arm's scores on attacks made on M_T (THROUGH_TARGET): each method's FGSM/PGD-3 mAP, mean over
    seeds, with the true labels and with shifted ones."""
    from yolo_advamd.validate import column_name

    parts = []
    for label in a["methods"]:
        maps = []
        for m in THROUGH_TARGET:
            if not (measured := [e[m] for e in runs if e["name"] == label and m in e]):
                continue
            scores = []
            for eps in study_budgets(a, label):
                fgsm, pgd = (statistics.mean(t[column_name(attack, eps)] for t in measured) for attack in ("fgsm", "pgd"))
                scores.append(f"{fgsm:.2f} / {pgd:.2f} at ε = {eps_text(eps)}")
            maps.append(f"{', '.join(scores)} ({len(measured)} seed{'s' * (len(measured) > 1)})")
        if maps:
            parts.append(f"{label} {' → '.join(maps)}")
    return ("Attacked through M_T instead (the perturbations the `attack_model=target` rows train on), FGSM / PGD-3 "
            "mAP50-95, mean over seeds, with the true labels → with every object's class moved to the next one in the "
            "attack (`benchmarks/label_leak.py`): " + "; ".join(parts) + ".") if parts else ""  # fmt: skip


def eps_text(eps: float) -> str:
    """A budget as written in the report: "1/255" for a whole number of 255ths, else the number ("0.01")."""
    n = eps * 255
    return f"{round(n)}/255" if abs(n - round(n)) < 1e-6 else f"{eps:g}"


def wall_ratio(e: dict, runs: list[dict]) -> float | None:
    """Run `e`'s wall time as a ratio to a vanilla run's of `runs` timed on the same machine (`machine`), the same
    seed's if it was, of their median epochs: an epoch slowed by another job on the cores does not move a median.
    None when no vanilla run was timed there: two machines of one kind ran the same recipe's epochs 2.0× apart."""
    same = [c for c in runs if c["name"] == "vanilla" and c.get("machine") == e.get("machine")]
    if not same:
        return None
    c = next((c for c in same if c["seed"] == e["seed"]), same[0])
    return statistics.median(e["epoch_seconds"]) / statistics.median(c["epoch_seconds"])


def machine() -> str:
    """This machine and boot: run times are compared only between runs timed on the same one."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{platform.node()} {boot.read_text().strip() if boot.is_file() else ''}".strip()


def write_recommended(a: dict, arm: str, label: str, why: str) -> None:
    """Write `hyps/recommended.yaml`: the settings of method `label` of arm `a`, with where they were measured and
    why."""
    settings = {**a["methods"][label]}
    header = (f"# Recommended by benchmarks/reproduce.py (rule: `recommend`) from docs/results/results.jsonl:\n"
              f"# {label} in the study's `{arm}` regime ({a['about']}),\n# chosen for {why}.\n"
              f"# Regime on digits-det: {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in a['recipe'].items())}; see docs/RESULTS.md.\n")  # fmt: skip
    RECOMMENDED.write_text(header + yaml.safe_dump(settings, sort_keys=False))


def deltas(records: list[dict], arm: str, label: str) -> dict:
    """The per-seed Δ of a study method vs the same-seed vanilla run: `benign`, `fgsm` and `pgd` (at its own ε), and
    `mpc` (under corruptions, where both have a corruption map)."""
    from yolo_advamd.validate import column_name

    runs = [e for e in records if e["profile"] == arm and e["key"] != "start"]
    out = {"benign": [], "fgsm": [], "pgd": [], "mpc": []}
    for e in (e for e in runs if e["name"] == label != "vanilla"):
        if c := control(runs, e):
            out["benign"].append(e["map"]["benign"] - c["map"]["benign"])
            if "corruption" in e and "corruption" in c:
                out["mpc"].append(e["corruption"]["mPC"] - c["corruption"]["mPC"])
            for attack in ("fgsm", "pgd"):
                col = column_name(attack, e["eps"]) if e.get("eps") else None
                if col in e["map"] and col in c["map"]:
                    out[attack].append(e["map"][col] - c["map"][col])
    return out


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
    for arm, a in study_arms(records).items():
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
    return arm, label, (f"no lift anywhere yet; of the methods that gain robustness (Δ FGSM > 0) it has the best Δ "
                        f"benign: {mean:+.2f}, Δ FGSM {fgsm:+.2f} over {n} seed(s)")  # fmt: skip


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
    return (f"{name} lift of {statistics.mean(v):+.2f} ± {statistics.stdev(v):.2f} over {len(v)} seeds, the largest "
            f"measured ({checked})")


def tasks_section(records: list[dict]) -> list[str]:
    """The report of the other tasks (`TASKS`): each run's scores and its Δ against the vanilla run of its seed."""
    from yolo_advamd.validate import column_name

    lines = ["## Other tasks: segmentation and classification", "",
             "From scratch, one seed per arm (`cls-r2`: three, one row each, Δ against the vanilla run of the same "
             "seed), so a Δ under about a point is within the noise seen on detection. Scores in %: mask mAP50-95 "
             "for segmentation, top-1 accuracy for classification; FGSM and PGD-3 at ε = 0.01.", "",
             "| task | method | benign | FGSM | PGD-3 | Δ benign | Δ FGSM | Δ PGD-3 | train min |", "|---" * 9 + "|"]  # fmt: skip
    for arm, a in TASKS.items():
        runs = [e for e in records if e["profile"] == arm]
        for e in sorted(runs, key=lambda e: e["name"] != "vanilla"):
            c = control(runs, e)
            cols = ["benign", column_name("fgsm", 0.01), column_name("pgd", 0.01)]
            cells = [f"{e['map'][k]:.2f}" if k in e["map"] else "" for k in cols]
            deltas = [f"{e['map'][k] - c['map'][k]:+.2f}" if c and e is not c and k in e["map"] and k in c["map"]
                      else "" for k in cols]  # fmt: skip
            lines.append(f"| {arm} | {e['name']} | " + " | ".join(cells + deltas) + f" | {e['train_seconds'] / 60:.1f} |")
    return lines + ["", *(f"- `{arm}`: {a['about']}." for arm, a in TASKS.items()), ""]


def overfit(run: dict) -> str:
    """Say whether a run overfits: its val mAP fell from its peak by more than twice its epoch-to-epoch noise (the
    median change between epochs over the last quarter) while its training loss kept falling."""
    curve, loss = run["curve"], run["train_loss"]
    peak = max(range(len(curve)), key=curve.__getitem__)
    last = curve[-max(len(curve) // 4, 2):]
    noise = statistics.median(abs(b - a) for a, b in zip(last, last[1:]))
    drop, falling = curve[peak] - curve[-1], loss[-1] < loss[peak]
    if drop <= 2 * noise:
        verdict = f"no overfitting: the end is within twice the epoch-to-epoch noise ({noise:.2f}) of the peak"
    else:
        verdict = "overfitting" if falling else "no overfitting: the training loss stopped falling"
    return (f"Vanilla (seed {run['seed']}): val mAP50-95 peaked at epoch {peak + 1} of {len(curve)} "
            f"({curve[peak]:.2f}) and ended at {curve[-1]:.2f}; the benign training loss went from {loss[peak]:.3f} "
            f"at the peak to {loss[-1]:.3f} at the end ({verdict}).")


def control(entries: list[dict], e: dict) -> dict | None:
    """The vanilla run of the same seed as `e`."""
    return next((c for c in entries if c["name"] == "vanilla" and c["seed"] == e["seed"]), None)


def spread(values: list[float], signed: bool = False) -> str:
    """Format a mean, with its standard deviation over seeds when there are several."""
    mean = f"{statistics.mean(values):{'+' if signed else ''}.2f}"
    return f"{mean} ± {statistics.stdev(values):.2f}" if len(values) > 1 else mean


def verdict(entries: list[dict], start: float | None = None) -> list[str]:
    """One line per (method, setting): mean Δ benign mAP50-95 vs the same-seed control, judged by its spread.

    "beats" / "is below" the control only when the mean Δ is more than one standard deviation over seeds from 0;
    with one seed there is no spread, so no verdict. With `start` (M_T's benign mAP50-95), each line also gives the
    method's mean benign mAP vs M_T, the paper's comparison.
    """
    benign = {}
    for e in entries:
        if e["name"] != "vanilla" and (c := control(entries, e)):
            benign.setdefault((e["name"], trained_on(e)), []).append((e["map"]["benign"], c["map"]["benign"]))
    lines = []
    for (name, trained), pairs in sorted(benign.items()):
        d = [m - c for m, c in pairs]
        mean = statistics.mean(d)
        vs_start = "" if start is None else f"; vs M_T {statistics.mean(m for m, _ in pairs) - start:+.2f}"
        if len(d) < 2:
            lines.append(f"- {name} ({trained}): Δ benign = {mean:+.2f} on 1 seed (no spread: no verdict){vs_start}.")
            continue
        sd = statistics.stdev(d)
        word = "beats" if mean > sd else "is below" if mean < -sd else "is within the seed spread of"
        lines.append(f"- {name} ({trained}): {word} the control on benign val, Δ = {mean:+.2f} ± {sd:.2f} "
                     f"over {len(d)} seeds{vs_start}.")  # fmt: skip
    return lines


def paper_table(entries: list[dict]) -> list[str]:
    """Table 3 (and Table 1's Adv-Train row) laid out as in the paper: each method trained on an attack and ε, then
    Δ vs the control on val attacked the same way, and on benign val; mean (± spread) over the recorded seeds."""
    from yolo_advamd.validate import column_name

    runs = [e for e in entries if e["name"] != "vanilla" and not e.get("vary") and control(entries, e)]
    if not (settings := sorted({(e["attack"], e["eps"]) for e in runs})):
        return ["No fine-tune recorded yet."]
    names = ["advtrain", *(f"ablation-{r}" for r in TABLE3[:-1]), "advamd"]
    heads = [f"{attack_label(a)} ε={eps}" for a, eps in settings]
    lines = ["| method | M | B | L | " + " | ".join(f"Δ adv, {h}" for h in heads) + " | "
             + " | ".join(f"Δ benign, {h}" for h in heads) + " |", "|---" * (4 + 2 * len(settings)) + "|"]  # fmt: skip
    for name in names:
        cells = []
        for col in ("adv", "benign"):
            for attack, eps in settings:
                c = "benign" if col == "benign" else column_name(attack, eps)
                d = [e["map"][c] - control(entries, e)["map"][c] for e in runs
                     if (e["name"], e["attack"], e["eps"]) == (name, attack, eps) and c in control(entries, e)["map"]]
                cells.append(spread(d, signed=True) if d else "")
        on = {"advtrain": "", "advamd": "MBL"}.get(name, name.removeprefix("ablation-"))
        switches = ["✓" if k in on else "" for k in "MBL"]
        lines.append(f"| {name} | " + " | ".join(switches + cells) + " |")
    return lines


def protocol(p: dict) -> str:
    """Describe a profile's protocol in one paragraph."""
    settings = [f"{a.upper()} ε = {eps}" for a, eps in p["train"]]
    rows = "Adv-Train and the seven Table 3 rows (AdvAmd is the last)" if p["ablations"] else "Adv-Train and AdvAmd"
    pgd = f" (PGD: {TRAIN_STEPS['pgd']} steps)" if any(a == "pgd" for a, _ in p["train"]) else ""
    seeds = (f"seeds {', '.join(map(str, p['seeds']))} for the control, Adv-Train and AdvAmd at {settings[0]}, seed "
             f"{p['seeds'][0]} for the rest" if len(p["seeds"]) > 1 else f"seed {p['seeds'][0]}")  # fmt: skip
    return (f"M_T = yolov8n from scratch, {p['target_epochs']} epochs on {p['fraction']:.0%} of the 2,000 train scenes "
            f"at {SCHEDULE['imgsz']} px. The control (vanilla), {rows} fine-tune M_T for {p['ft_epochs']} epochs on the "
            f"same scenes (AdamW, lr0 5e-4, batch {SCHEDULE['batch']}, no warmup, no mosaic), attacking M_T with "
            f"{', '.join(settings)}{pgd}; {seeds}. Each is evaluated on benign val and "
            f"on val attacked with FGSM and PGD-{EVAL_STEPS} at the ε it trained with; the control at every ε.")  # fmt: skip


def slope(curve: list[float]) -> float:
    """Least-squares gain per epoch of a val mAP curve."""
    return statistics.linear_regression(range(len(curve)), curve).slope


def profile_section(name: str, entries: list[dict]) -> list[str]:
    """The report of one profile: protocol, M_T, verdict, the paper's tables, every run, absolute numbers."""
    target = next((e for e in entries if e["key"] == "target"), None)
    entries = [e for e in entries if e["key"] != "target"]
    cols = sorted({c for e in entries for c in e["map"]}, key=lambda c: (c != "benign", c))
    lines = [f"## Profile `{name}`", "", protocol(PROFILES[name]), ""]
    if target:
        tail = target["curve"][-5:]
        lines += ["M_T: " + ", ".join(f"{c} {v:.2f}" for c, v in target["map"].items())
                  + f" ({target['train_seconds'] / 60:.1f} min). Val mAP50-95 over its last 5 epochs: "
                  + ", ".join(f"{v:.1f}" for v in tail) + f" ({slope(tail):+.2f} points an epoch: "
                  + ("at a plateau" if abs(slope(tail)) < 0.2 else "near a plateau, still gaining" if slope(tail) < 1
                     else "still learning, not at a plateau") + ").", ""]  # fmt: skip
    lines += ["### Verdict: benign mAP50-95 of each method vs the control", ""]
    lines += verdict(entries, target and target["map"]["benign"]) or ["No fine-tune recorded yet."]
    lines += ["", "### Tables 1 and 3 analogue: Δ mAP50-95 vs the control, as laid out in the paper", "",
              "Each column: trained on that attack and ε; `Δ adv` is on val attacked the same way. Mean ± spread "
              "over the recorded seeds (one seed where no spread is shown). M = mediate samples, B = auxiliary BN, "
              "L = AdvAmd loss; advtrain is Table 1's Adv-Train (all off).", ""]  # fmt: skip
    lines += paper_table(entries)
    lines += ["", "### Every run: Δ mAP50-95 vs the control", "",
              "| method | trained on | seed | " + " | ".join(f"Δ {c}" for c in cols) + " | train min |",
              "|---" * (len(cols) + 4) + "|"]  # fmt: skip
    for e in sorted(entries, key=lambda e: (e["attack"], e["eps"], e["name"], trained_on(e), e["seed"])):
        c = control(entries, e)
        cells = [f"{e['map'][col] - c['map'][col]:+.2f}" if c and col in e["map"] and col in c["map"] else "" for col in cols]
        lines.append(f"| {e['name']} | {trained_on(e)} | {e['seed']} | " + " | ".join(cells)
                     + f" | {e['train_seconds'] / 60:.1f} |")  # fmt: skip
    lines += ["", "### Absolute mAP50-95, mean ± spread over seeds", "", "| method | trained on | seeds | "
              + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]  # fmt: skip
    if target:  # where every fine-tune started
        lines.append("| M_T (start) | — | — | " + " | ".join(f"{target['map'][c]:.2f}" if c in target["map"] else ""
                                                             for c in cols) + " |")  # fmt: skip
    for (_, method, trained), es in sorted(groups(entries).items()):
        cells = [spread(v) if (v := [x["map"][c] for x in es if c in x["map"]]) else "" for c in cols]
        lines.append(f"| {method} | {trained} | {len(es)} | " + " | ".join(cells) + " |")
    return lines + [""]


def groups(entries: list[dict]) -> dict:
    """Group trained runs by (profile, method, training setting); the starting models (M_T) are not among them."""
    out = {}
    for e in entries:
        if e["key"] not in {"target", "start"}:
            out.setdefault((e["profile"], e["name"], trained_on(e)), []).append(e)
    return out


def report() -> str:
    """Write docs/RESULTS.md and the plot from the results file (and the last benchmarks); return the Markdown."""
    records = load()
    lines = ["# Results on the embedded digits-det data", "",
             "Generated by `benchmarks/reproduce.py` from `docs/results/results.jsonl`; numbers are whatever was",
             "measured. mAP50-95 in %, on val (500 scenes), benign through the main BN, adversarial = white-box",
             "attack on the evaluated model. Δ = method − the vanilla fine-tune of the same profile and seed (the",
             "control: same epochs, no attack). `train min`: wall time on 2 CPU cores, longer when other jobs",
             "shared the machine.", ""]  # fmt: skip
    if any(e["profile"] in study_arms(records) for e in records):
        lines += lift_section(records)
    if any(e["profile"] in TASKS for e in records):
        lines += tasks_section(records)
    if DISCUSSION.exists():
        lines += [DISCUSSION.read_text().strip(), ""]
    for name in sorted(PROFILES, key=lambda n: n == "quick"):  # the full protocol first
        if entries := [e for e in records if e["profile"] == name]:
            lines += profile_section(name, entries)
    if BENCH.exists():
        lines += ["## Step cost and attack speed", "", "```", BENCH.read_text().strip(), "```", ""]
    lines += ["![benign vs adversarial mAP](results/benign_vs_adv.png)", ""]
    text = "\n".join(lines)
    REPORT.write_text(text)
    plot(records)
    return text


def plot(records: list[dict]) -> None:
    """Plot benign vs adversarial mAP50-95, one panel per profile and training setting: each method trained there and
    the control, on val attacked as that method was trained (means over seeds; bars: spread over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from yolo_advamd.validate import column_name

    panels = {}  # (profile, attack, eps) -> {label: runs}
    for (prof, name, _), es in sorted(groups(records).items()):
        if name != "vanilla" and prof not in TASKS and column_name(es[0]["attack"], es[0]["eps"]) in es[0]["map"]:
            varied = [f"{k}={v}" for k, v in es[0].get("vary", {}).items() if k not in {"attack", "eps"}]
            panels.setdefault((prof, es[0]["attack"], es[0]["eps"]), {})[" ".join([name, *varied])] = es
    if not panels:  # no fine-tune recorded yet
        return
    labels = ["control", *sorted({label for runs in panels.values() for label in runs})]
    style = {label: (f"C{i % 10}", "osD^v<>pPX*h"[i % 12]) for i, label in enumerate(labels)}
    fig = Figure(figsize=(4 * min(len(panels), 4) + 2.5, 3.6 * -(-len(panels) // 4)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(-(-len(panels) // 4), min(len(panels), 4), squeeze=False).flat)
    for ax, ((prof, attack, eps), runs) in zip(axes, sorted(panels.items())):
        col = column_name(attack, eps)
        controls = [c for c in records if c["profile"] == prof and c.get("name") == "vanilla" and col in c["map"]]
        for label, es in [("control", controls)] * bool(controls) + list(runs.items()):
            x, y = ([e["map"][c] for e in es] for c in ("benign", col))
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in (x, y)]
            color, marker = style[label]
            ax.errorbar(statistics.mean(x), statistics.mean(y), xerr=sd[0], yerr=sd[1], fmt=marker, color=color, capsize=3)
        ax.set_title(f"{prof}: trained on {attack_label(attack)} ε={eps:.4g}", fontsize=9)
        ax.set_xlabel("benign mAP50-95 (%)", fontsize=8)
        ax.set_ylabel(f"mAP50-95 on {col} val (%)", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=style[label][0], marker=style[label][1], linestyle="") for label in labels]
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=100)


def benchmarks() -> str:
    """Run the attack-speed and step-cost benchmarks (5 timed steps per method); return their printed tables."""
    out = []
    for cmd in (["attack_speed.py"], ["train_step.py", "--steps", "5", "--warmup", "1"]):
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / cmd[0]), *cmd[1:]], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"benchmarks/{cmd[0]} failed (exit code {r.returncode}):\n{r.stderr[-3000:]}")
        lines = r.stdout.splitlines()
        first = next((i for i, line in enumerate(lines) if re.match(r"\S+ imgsz=\d", line)), 0)  # first table title
        tables = [line for line in lines[first:] if "\x1b" not in line and not line.startswith("Overriding")]
        out.append("\n".join([f"$ python benchmarks/{' '.join(cmd)}", *tables]))
    return "\n\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="(a), (b), (c) at FGSM eps=0.01 only")
    parser.add_argument("--report", action="store_true", help="only regenerate the report from the results file")
    parser.add_argument("--bench", action="store_true", help="also run benchmarks/ into the report")
    parser.add_argument("--vary", nargs="+", metavar="KEY=VALUE", help="train (c) AdvAmd with these settings only")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds of (a), (b), (c) instead of the profile's")
    parser.add_argument("--fresh", action="store_true", help="archive the profile's records and run it anew")
    parser.add_argument("--study", nargs="*", metavar="ARM", choices=[*ARMS, "capacity"],
                        help=f"run the study's arms ({', '.join(STUDY)}, then capacity; all when none is named) or the "
                        f"task rows of --quick alone ({', '.join(TASKS)})")  # fmt: skip
    opt = parser.parse_args()
    if opt.study is not None and not opt.report:
        try:
            run_study(opt.study)
        except (ValueError, FileNotFoundError) as e:
            parser.exit(2, f"reproduce.py: error: {e}\n")
    elif not opt.report:
        vary = {}
        for arg in opt.vary or []:
            k, eq, v = arg.partition("=")
            if not eq:
                parser.error(f"--vary {arg}: give KEY=VALUE, e.g. --vary beta3=0.5")
            vary[k] = yaml.safe_load(v)
        from yolo_advamd.cfg import resolve_advamd_cfg

        try:
            resolve_advamd_cfg(vary)  # a bad key or value fails now, not after M_T
            if opt.fresh and (dest := archive("quick" if opt.quick else "full")):
                print(f"reproduce.py: the earlier records are in {dest}")
            run_protocol("quick" if opt.quick else "full", vary, opt.seeds)
            if opt.quick and not vary:
                run_study(["quick-seg", "quick-cls"])  # the segmentation and classification rows
        except (SyntaxError, ValueError, FileNotFoundError) as e:
            parser.exit(2, f"reproduce.py: error: {e}\n")
    if opt.bench:
        BENCH.write_text(benchmarks())
    print(report())
