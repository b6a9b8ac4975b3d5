"""DeepFool's fast variant against the exact one: flips, ||delta|| before projection, mAP under attack (issue 29).

The criterion for making the fast variant the default was fixed before any measurement, in the docstring of
`yolo_advamd/attacks/deepfool.py`; this script measures it and prints the verdict. Three models, each on one batch:

- `detector`: the test suite's digits detector (yolov8n, nc = 10, fitted to its 16 val scenes at 64 px);
- `classifier`: the test suite's digits classifier (yolov8n-cls, fitted to its 20 val images at 32 px);
- `crowded80`: a yolov8n with nc = 80 fitted the same way (`helpers.fit`) to 8 synthetic 128 px scenes of 20 objects
  each (one colored square per class on a noise background, every object in its own cell of a 5 x 4 grid).

Per model and variant (eval mode, L-inf, the attack's defaults): one unconstrained run on the batch (eps = 1, so the
final projection changes nothing) gives the median per-image ||delta||_inf before projection and the wall time of the
attack; its result projected onto each eps ball gives the flipped fraction (objects classified right at x whose
class changed, `objective.object_logits`), which equals the attack's own result at that eps since DeepFool only
projects at the end. The mAP50-95 under attack (top-1 accuracy for the classifier) is what `validate_advamd` reports
with `attacks=deepfool deepfool=<variant>` on the same images.

Timings are wall times of one call on a CPU that other jobs may share; the strength figures do not depend on it.

Examples:
    $ python benchmarks/deepfool_strength.py --cache /tmp/df  # fits three models first: most of an hour on 2 busy cores
    $ python benchmarks/deepfool_strength.py --models detector classifier
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from ultralytics.nn.tasks import DetectionModel

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's fitted models and batches
from helpers import checkpoints, digits_data, fit, folder_batch, save_ckpt, task_checkpoints, val_batch  # noqa: E402
from scenes import crowded_scenes  # noqa: E402

from yolo_advamd.attacks import DeepFool  # noqa: E402
from yolo_advamd.attacks.objectives import objective_for  # noqa: E402
from yolo_advamd.attacks.settings import DEEPFOOL_VARIANTS  # noqa: E402
from yolo_advamd.checkpoint import attack_copy, load_model  # noqa: E402
from yolo_advamd.cli import use_all_cores  # noqa: E402
from yolo_advamd.results_table import BENIGN, column_name  # noqa: E402
from yolo_advamd.tasks import TASKS  # noqa: E402
from yolo_advamd.validate import validate_advamd  # noqa: E402

EPS = (0.01, 8 / 255)
FLIPS, SIZE, DAMAGE = 0.9, 1.1, 0.9  # the criterion: flips >= 0.9x exact, ||delta|| <= 1.1x, >= 90 % of the damage


def setups(base: Path, names: list[str]) -> dict:
    """Return, per model name: its checkpoint, dataset, image size and the batch it is attacked on."""
    out = {}
    if "detector" in names:
        out["detector"] = {"ckpt": checkpoints(base)["stock"], "data": digits_data(base), "imgsz": 64}
        out["detector"]["batch"] = val_batch(out["detector"]["data"])
    if "classifier" in names:
        d = task_checkpoints(base)["classify"]
        out["classifier"] = {**d, "batch": folder_batch(d["data"])}
    if "crowded80" in names:
        data = crowded_scenes(base / "crowded80")
        batch = val_batch(data, imgsz=128)
        ckpt = base / "crowded80.pt"
        if not ckpt.is_file():
            torch.manual_seed(1)
            model = fit(DetectionModel("yolov8n.yaml", nc=80, verbose=False), batch, steps=150)
            model.names = {c: f"c{c}" for c in range(80)}
            save_ckpt(model, ckpt, train_args={"imgsz": 128})
        out["crowded80"] = {"ckpt": ckpt, "data": data, "imgsz": 128, "batch": batch}
    return out


def strength(setup: dict, variant: str, base: Path) -> dict:
    """Measure one variant on one model: ||delta|| before projection, flips per eps, time, and the metric per eps."""
    net, _, train_args = load_model(setup["ckpt"], "to attack it")
    model = attack_copy(net, train_args, torch.device("cpu"))
    batch = setup["batch"]
    objective = objective_for(model, batch)
    t = time.perf_counter()
    result = DeepFool(eps=1.0, variant=variant)(batch["img"], objective)  # eps = 1: no projection
    seconds = time.perf_counter() - t
    with objective.frozen(), torch.no_grad():
        clean = objective.object_logits(batch["img"]).argmax(1) == objective.labels
        flips = {}
        for eps in EPS:
            adv = (batch["img"] + result.delta.clamp(-eps, eps)).clamp(0, 1)
            flipped = objective.object_logits(adv).argmax(1) != objective.labels
            flips[eps] = float((flipped & clean).sum() / clean.sum().clamp(min=1))
    table = validate_advamd(
        setup["ckpt"],
        str(setup["data"]),
        attacks="deepfool",
        eps=list(EPS),
        deepfool=variant,
        imgsz=setup["imgsz"],
        batch=16,
        device="cpu",
        project=str(base / "val"),
        name=variant,
        plots=False,
        verbose=False,
    )
    key = next(iter(TASKS[table["task"]].scores.values()))  # mAP50-95, or top-1 accuracy
    stats = table["rows"][0]["stats"]
    return {
        "size": float(result.delta.flatten(1).abs().amax(1).median()),
        "flips": flips,
        "clean": stats[BENIGN][key],
        "metric": {eps: stats[column_name("deepfool", eps)][key] for eps in EPS},
        "seconds": seconds,
        "objects": int(clean.sum()),
    }


def verdict(fast: dict, exact: dict) -> list[str]:
    """Return the criteria the fast variant misses against the exact one (empty: it meets all three)."""
    misses = []
    for eps in EPS:
        if fast["flips"][eps] < FLIPS * exact["flips"][eps]:
            misses.append(f"flips at eps={eps:.4g}")
        if exact["clean"] - fast["metric"][eps] < DAMAGE * (exact["clean"] - exact["metric"][eps]):
            misses.append(f"damage at eps={eps:.4g}")
    if fast["size"] > SIZE * exact["size"]:
        misses.append("||delta|| before projection")
    return misses


def main() -> None:
    """Measure both variants on each model and print the table and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=("detector", "classifier", "crowded80"),
        default=["detector", "classifier", "crowded80"],
        help="models to measure",
    )
    parser.add_argument("--cache", default=None, help="keep the data and fitted models here (default: a temp dir)")
    args = parser.parse_args()
    use_all_cores()
    with tempfile.TemporaryDirectory(prefix="advamd-deepfool-") as tmp:
        base = Path(args.cache or tmp)
        rows, failed = [], []
        for name in args.models:
            setup = setups(base, [name])[name]
            print(f"Measuring {name} ...", flush=True)
            results = {v: strength(setup, v, Path(tmp) / name) for v in DEEPFOOL_VARIANTS}
            rows += [(name, v, r) for v, r in results.items()]
            print(f"{name}: {results}", flush=True)
            if misses := verdict(results["fast"], results["exact"]):
                failed.append(f"{name}: {', '.join(misses)}")
    e1, e2 = (f"{e:.4g}" for e in EPS)
    print(
        f"\nDeepFool variants, eval mode, L-inf, default steps and candidates; {torch.get_num_threads()} threads "
        "(time: one call, CPU shared with other jobs)"
    )
    head = f"{'model':11s}{'variant':>8s}{'objects':>8s}{'flip ' + e1:>12s}{'flip ' + e2:>12s}{'|d|inf pre':>11s}"
    print(head + f"{'clean':>8s}{'att ' + e1:>11s}{'att ' + e2:>11s}{'s/call':>8s}")
    for name, variant, r in rows:
        line = f"{name:11s}{variant:>8s}{r['objects']:8d}{r['flips'][EPS[0]]:12.3f}{r['flips'][EPS[1]]:12.3f}"
        line += f"{r['size']:11.4f}{r['clean']:8.3f}{r['metric'][EPS[0]]:11.3f}{r['metric'][EPS[1]]:11.3f}"
        print(line + f"{r['seconds']:8.2f}")
    print("clean / att: mAP50-95 (top-1 accuracy for the classifier) benign and under DeepFool at each eps.")
    print(
        f"Criterion: fast flips >= {FLIPS}x exact at each eps, ||delta|| before projection <= {SIZE}x exact, and "
        f"at least {DAMAGE:.0%} of the exact variant's metric drop at each eps, on every model."
    )
    print(
        "Verdict: "
        + (
            "the fast variant meets the criterion on every model."
            if not failed
            else "the fast variant misses it: " + "; ".join(failed)
        )
    )


if __name__ == "__main__":
    main()
