"""Run the planned runs not yet recorded: train each with the AdvAmd trainer, evaluate it with `validate_advamd` and
append it to the results file, resuming where a stopped protocol or study left off."""

from __future__ import annotations

import csv
import platform
import re
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

from . import paths
from .arms import EVAL_STEPS, HEADLINE, MAGNET, PROFILES, SCHEDULE, THROUGH_TARGET, target_recipe
from .plans import (
    check_study,
    eval_eps,
    key,
    method_name,
    plan,
    start_weights,
    study_arms,
    study_budgets,
    study_key,
    study_plan,
    study_settings,
)
from .records import load, on_disk, record, stored
from .report import report

RERUN_KEPT = ("map", "train_seconds", "machine", "commit")  # what a record trained again keeps of the first one
# a run trained again goes to a folder of its own: the recorded weights stay gone until its new record names the new
# ones, so a rerun stopped midway is still a rerun when the runner starts again, and resumes
RERUN_SUFFIX = "_rerun"


def run_protocol(
    profile_name: str, vary: dict | None = None, seeds: list[int] | None = None, rerun: tuple[str, ...] = ()
) -> None:
    """Train M_T if needed, then every planned run not yet recorded, appending each as it finishes; a recorded run of
    a method in `rerun` whose weights are gone is trained again (see `run_study`)."""
    import yolo_advamd  # noqa: F401
    from yolo_advamd.cli import use_all_cores
    from yolo_advamd.data import resolve_dataset

    use_all_cores()
    profile = {**PROFILES[profile_name], **({"seeds": tuple(seeds)} if seeds else {})}
    data = resolve_dataset(str(paths.ROOT / "data" / "digits-det.yaml"))
    project = str(paths.ROOT / "runs" / f"reproduce-{profile_name}")
    done = {e["key"]: e for e in load() if e["profile"] == profile_name}
    budgets = sorted({eps for _, eps in profile["train"]})
    if "target" not in done:
        kept = paths.TARGETS / f"{profile_name}.pt"
        trained = train_target("yolov8n.yaml", profile_name, data, project, "target", kept)
        done["target"] = {
            "key": "target",
            "profile": profile_name,
            "weights": stored(kept),
            **trained,
            "map": evaluate(kept, data, budgets, f"{profile_name}-target"),
        }
        record(done["target"])
    target = str(on_disk(done["target"]["weights"]))
    if not Path(target).is_file():
        raise FileNotFoundError(
            f"the recorded M_T of profile {profile_name!r} ({target}) is not on disk, and every recorded fine-tune "
            f"started from it: restore it there, or add --fresh to run the profile anew (its records are archived)"
        )
    done["target"] = complete(done["target"], budgets, data)
    for run in plan(profile, vary):
        k = key(run)
        earlier = done[k] if k in done and done[k].get("name") in rerun and weights_gone(done[k]) else None
        if k in done and not earlier:
            done[k] = complete(done[k], eval_eps(run, profile, vary), data)
            continue
        name = k.replace("/", "_") + RERUN_SUFFIX * bool(earlier)
        settings = {k: v for k, v in run.items() if k != "vary"}
        if run["method"] == "magnet":  # it defends the same-seed control: its weights first, before any training
            defended = on_disk(done[key({**run, "method": "vanilla"})]["weights"])  # vanilla//seedN
            if not defended.is_file():
                raise FileNotFoundError(
                    f"MagNet defends the same-seed control, whose weights {defended} are gone: add --rerun vanilla "
                    "to train it again first"
                )
        weights, seconds = train(
            {
                "model": target,
                "data": data,
                "epochs": profile["ft_epochs"],
                "lr0": 0.0005,
                "close_mosaic": profile["ft_epochs"],
                "fraction": profile["fraction"],
                "attack_model": "target",
                "abar_batches": 10,
                "project": project,
                "name": name,
                **settings,
                **(MAGNET if run["method"] == "magnet" else {}),
            }
        )
        budgets, extra = eval_eps(run, profile, vary), {}
        if run["method"] == "magnet":  # the same-seed control, scored through the autoencoder
            scores, extra["rejected"] = evaluate_defended(defended, weights, data, budgets, f"{profile_name}-{name}")
            extra["defends"] = stored(defended)
        else:
            scores = evaluate(weights, data, budgets, f"{profile_name}-{name}")
        done[k] = {
            "key": k,
            "profile": profile_name,
            **run,
            "name": method_name(run),
            "train_seconds": seconds,
            "weights": stored(weights),
            "map": scores,
            **extra,
            **({"rerun_of": {f: earlier[f] for f in RERUN_KEPT if f in earlier}} if earlier else {}),
        }
        record(done[k])
        report()


def run_study(names: list[str] | None = None, rerun: tuple[str, ...] = ()) -> None:
    """Run the planned runs of the arms named (all study arms when none is) not yet recorded, appending each as it
    finishes; then measure the maps that runs recorded earlier lack (`added_scores`) while their weights exist.

    A recorded run of a method in `rerun` whose weights are gone is trained again with its settings and recorded anew
    (the last record wins), its earlier scores kept under `rerun_of`: the maps measured since (corruptions) need its
    weights, and the two records show whether the run reproduces.
    """
    import yolo_advamd  # noqa: F401
    from yolo_advamd.checkpoint import model_task
    from yolo_advamd.cli import use_all_cores

    use_all_cores()
    check_study()
    while True:
        records = load()
        gone = {(e["profile"], e["key"]): e for e in records if e.get("name") in rerun and weights_gone(e)}
        done = {(e["profile"], e["key"]) for e in records} - set(gone)
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
                project = str(paths.ROOT / "runs" / "study-targets")
                trained = train_target(f"{model}.yaml", profile, data, project, a["start"], kept)
            if kept.is_file():
                record(
                    {
                        "key": "start",
                        "profile": arm,
                        "name": "M_T",
                        "weights": stored(kept),
                        "train_seconds": 0,
                        **trained,
                        "map": evaluate(kept, data, study_budgets(a, "vanilla"), f"{arm}-start"),
                    }
                )
        if kept and not kept.is_file():
            raise FileNotFoundError(f"study arm {arm!r} starts from {kept}, which is not on disk")
        settings = study_settings(a, label, seed)
        name = re.sub(r"[^\w.=-]+", "_", f"{label}_seed{seed}".replace("ε", "eps").replace("/", "-"))
        name += RERUN_SUFFIX * ((arm, study_key(label, seed)) in gone)
        weights, seconds = train(
            {**settings, "data": data, "project": str(paths.ROOT / "runs" / f"study-{arm}"), "name": name}
        )
        task = "detect" if kept else model_task({"model": a["start"]})  # every kept M_T is a detector
        curves = epoch_curves(weights.parents[1] / "results.csv", task)
        imgsz = settings.get("imgsz", SCHEDULE["imgsz"])
        model = {**settings, "model": stored(kept) if kept else a["start"]}
        entry = {
            "key": study_key(label, seed),
            "profile": arm,
            "name": label,
            "seed": seed,
            "settings": model,
            "attack": settings.get("attack"),
            "eps": settings.get("eps"),
            "steps": settings.get("steps"),
            "train_seconds": seconds,
            "machine": machine(),
            "weights": stored(weights),
            **curves,
            "map": evaluate(weights, data, study_budgets(a, label), f"{arm}-{name}", imgsz),
        }
        if earlier := gone.get((arm, entry["key"])):
            entry["rerun_of"] = {f: earlier[f] for f in RERUN_KEPT if f in earlier}
        record({**entry, **added_scores(entry, a)})
        report()
    # then runs recorded before their arm measured through M_T or corruptions, while their weights exist
    for e in load():
        if e["profile"] in arms and e["key"] != "start" and (maps := added_scores(e, arms[e["profile"]])):
            record({**e, **maps})
    report()


def weights_gone(entry: dict) -> bool:
    """Whether a recorded run's weights are missing on this machine (fine-tune weights stay in runs/, on one)."""
    return entry["key"] != "start" and not on_disk(entry["weights"]).is_file()


def train_target(model: str, profile: str, data: str, project: str, name: str, kept: Path) -> dict:
    """Train an M_T from scratch (`model`, seed 0) with `profile`'s target recipe and keep a copy at `kept`; return its
    training time and per-epoch curves (its val mAP shows the plateau, or not)."""
    weights, seconds = train(
        {
            "model": model,
            "data": data,
            "method": "vanilla",
            "seed": 0,
            **target_recipe(PROFILES[profile]),
            "project": project,
            "name": name,
        }
    )
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, kept)
    return {"train_seconds": seconds, **epoch_curves(weights.parents[1] / "results.csv")}


def arm_data(a: dict) -> str:
    """The dataset of arm `a` (digits-det unless it names one), built on first use."""
    from yolo_advamd.data import resolve_dataset

    return resolve_dataset(str(paths.ROOT / a.get("data", "data/digits-det.yaml")))


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


def machine() -> str:
    """This machine and boot: run times are compared only between runs timed on the same one."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{platform.node()} {boot.read_text().strip() if boot.is_file() else ''}".strip()


def evaluate(
    weights: Path,
    data: str,
    eps: list[float],
    name: str,
    imgsz: int = 160,
    attack_model: Path | None = None,
    shifted: bool = False,
) -> dict:
    """Benign and FGSM/PGD scores (%) of `weights` at the budgets `eps`, per table column: mAP50-95 (a segmentation
    model's mask mAP50-95, a classifier's top-1 accuracy); attacks on `attack_model` instead when one is given, made
    with every object's class moved to the next one when `shifted` (a detector's; benchmarks/label_leak.py)."""
    from label_leak import shifted_labels

    with shifted_labels() if shifted else nullcontext():
        res = validation(weights, data, eps, name, imgsz=imgsz, attack_model=attack_model and str(attack_model))
    return headline_scores(res)


def evaluate_defended(weights: Path, defense: Path, data: str, eps: list[float], name: str) -> tuple[dict, dict]:
    """Scores (%) of `weights` through MagNet's `defense` (attacks made on the model, the paper's setting) as
    `evaluate` gives them, and the share of val images the defense rejected (%), per table column."""
    from yolo_advamd.validators import REJECTED

    res = validation(weights, data, eps, name, defense=str(defense))
    return headline_scores(res), {col: 100 * s[REJECTED] for col, s in res["rows"][0]["stats"].items()}


def validation(weights: Path, data: str, eps: list[float], name: str, **settings) -> dict:
    """`validate_advamd` of `weights` on benign val and on FGSM and PGD-EVAL_STEPS at `eps`, with `settings`, written
    to runs/reproduce-val/<name>."""
    from yolo_advamd.validate import validate_advamd

    return validate_advamd(
        str(weights),
        data,
        attacks="fgsm,pgd",
        eps=eps,
        steps=EVAL_STEPS,
        project=str(paths.ROOT / "runs" / "reproduce-val"),
        name=name,
        exist_ok=True,
        **settings,
    )


def evaluate_corruptions(weights: Path, data: str, name: str, imgsz: int = 160) -> dict:
    """Scores (%) of `weights` on val under the COCO-C benchmark's 15 common corruptions × severities 1-5, per table
    column (`benign`, one per corrupted set, `mPC`, `rPC`), the headline score as in `evaluate`."""
    from yolo_advamd.validate import validate_advamd

    res = validate_advamd(
        str(weights),
        data,
        attacks="",
        corruptions="common",
        imgsz=imgsz,
        project=str(paths.ROOT / "runs" / "reproduce-val"),
        name=name,
        exist_ok=True,
    )
    return headline_scores(res)


def headline_scores(res: dict) -> dict:
    """The model's headline score (`HEADLINE`, %) per column of a `validate_advamd` result."""
    return {col: 100 * s[HEADLINE[res["task"]]] for col, s in res["rows"][0]["stats"].items()}


def complete(entry: dict, eps: list[float], data: str) -> dict:
    """Evaluate a recorded run at the budgets it lacks (the control of a newly planned ε), record and return it."""
    from yolo_advamd.validate import column_name

    if missing := [e for e in eps if column_name("fgsm", e) not in entry["map"]]:
        if not (weights := on_disk(entry["weights"])).is_file():  # fine-tune weights stay in runs/, on one machine
            print(f"reproduce.py: {entry['key']} lacks ε = {missing} and its weights {weights} are gone: left as is")
            return entry
        name = f"{entry['profile']}-{entry['key'].replace('/', '_')}"
        if "defends" in entry:  # MagNet: its control, through the autoencoder
            scores, rejected = evaluate_defended(on_disk(entry["defends"]), weights, data, missing, name)
            entry = {**entry, "map": {**scores, **entry["map"]}, "rejected": {**rejected, **entry["rejected"]}}
        else:
            entry = {**entry, "map": {**evaluate(weights, data, missing, name), **entry["map"]}}
        record(entry)
    return entry


def added_scores(entry: dict, a: dict) -> dict:
    """The maps a study run of arm `a` lacks: through M_T (`target_scores`), under corruptions (`corruption_scores`)."""
    return {**target_scores(entry, a), **corruption_scores(entry, a)}


def target_scores(entry: dict, a: dict) -> dict:
    """For a run of an arm with `transfer`: the maps of THROUGH_TARGET it lacks, its FGSM/PGD scores on attacks made on
    the arm's M_T (not on the run itself); {} when there is nothing to measure."""
    kept = start_weights(a["start"])
    if not a.get("transfer") or not kept or not (missing := [m for m in THROUGH_TARGET if m not in entry]):
        return {}
    if not (weights := on_disk(entry["weights"])).is_file():
        print(
            f"reproduce.py: {entry['profile']} {entry['key']} lacks its {' and '.join(missing)} scores and its "
            f"weights {weights} are gone: left as is"
        )
        return {}
    name = f"{entry['profile']}-{entry['key'].replace('/', '_')}"
    imgsz = entry["settings"].get("imgsz", SCHEDULE["imgsz"])
    eps = study_budgets(a, entry["name"])
    maps = {m: evaluate(weights, arm_data(a), eps, f"{name}-{m}", imgsz, kept, THROUGH_TARGET[m]) for m in missing}
    return {m: {col: v for col, v in scores.items() if col != "benign"} for m, scores in maps.items()}  # white-box's


def corruption_scores(entry: dict, a: dict) -> dict:
    """For a study run of arm `a` without one: its `corruption` map (`evaluate_corruptions`: mPC, rPC and the score
    per corrupted set); {} when it has one or its weights are gone."""
    if "corruption" in entry:
        return {}
    if not (weights := on_disk(entry["weights"])).is_file():
        print(
            f"reproduce.py: {entry['profile']} {entry['key']} lacks its corruption scores and its weights {weights} "
            "are gone: left as is"
        )
        return {}
    name = f"{entry['profile']}-{entry['key'].replace('/', '_')}-corruption"
    imgsz = entry["settings"].get("imgsz", SCHEDULE["imgsz"])
    return {"corruption": evaluate_corruptions(weights, arm_data(a), name, imgsz)}


def benchmarks() -> str:
    """Run the attack-speed and step-cost benchmarks (5 timed steps per method); return their printed tables."""
    out = []
    for cmd in (["attack_speed.py"], ["train_step.py", "--steps", "5", "--warmup", "1"]):
        script = str(paths.ROOT / "benchmarks" / cmd[0])
        r = subprocess.run([sys.executable, script, *cmd[1:]], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"benchmarks/{cmd[0]} failed (exit code {r.returncode}):\n{r.stderr[-3000:]}")
        lines = r.stdout.splitlines()
        first = next((i for i, line in enumerate(lines) if re.match(r"\S+ imgsz=\d", line)), 0)  # first table title
        tables = [line for line in lines[first:] if "\x1b" not in line and not line.startswith("Overriding")]
        out.append("\n".join([f"$ python benchmarks/{' '.join(cmd)}", *tables]))
    return "\n\n".join(out)
