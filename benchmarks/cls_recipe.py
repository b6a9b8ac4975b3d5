"""Does vanilla learn from the first epochs under a classification arm's recipe? Check it before any AdvAmd run.

Trains the arm's vanilla run (our trainer, `method=vanilla`) and a stock Ultralytics `ClassificationTrainer` with the
same settings (`study.arms.SCHEDULE`, the arm's recipe, the seed), then prints each one's val top-1 per epoch, its wall
time, and whether the arm's `criterion` (top-1 above a bar at an epoch) holds. The two runs should agree: the vanilla
row is then a fair control, stock Ultralytics training by another name.

Usage:
    python benchmarks/cls_recipe.py                      # the `cls-r2` arm, seed 0
    python benchmarks/cls_recipe.py arm=cls-r2 seed=1 lr0=0.001 trainers=vanilla   # a candidate recipe, vanilla only
    python benchmarks/cls_recipe.py trainers=stock       # one of the two (run both at once on a busy machine)
"""

from __future__ import annotations

import tempfile
import time

from study import arms, plans, runner

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd.cfg import parse_cli


def top1_curve(trainer_class, overrides: dict) -> tuple[list[float], float]:
    """Train with `trainer_class` and return its val top-1 (%) per epoch and the wall seconds of `train()`."""
    trainer = trainer_class(overrides=overrides)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return runner.epoch_curves(trainer.save_dir / "results.csv", "classify")["curve"], seconds


def main(argv: list[str] | None = None) -> dict:
    """Run the arm's vanilla (and stock) recipe, print the curves and the criterion's verdict; return them."""
    from ultralytics.models.yolo.classify import ClassificationTrainer

    from yolo_advamd.cli import use_all_cores
    from yolo_advamd.trainer import AdvAmdClassificationTrainer

    args = parse_cli(argv)
    arm = arms.TASKS[args.pop("arm", "cls-r2")]
    seed, chosen = args.pop("seed", 0), str(args.pop("trainers", "vanilla,stock")).split(",")
    epoch, bar = arm["criterion"]
    use_all_cores()
    settings = {**arms.SCHEDULE, **plans.study_settings(arm, "vanilla", seed), **args}
    settings["data"] = runner.arm_data(arm)
    trainers = {
        "vanilla": ("vanilla (AdvAmdClassificationTrainer, method=vanilla)", AdvAmdClassificationTrainer),
        "stock": ("stock ClassificationTrainer", ClassificationTrainer),
    }
    if bad := [t for t in chosen if t not in trainers]:
        raise ValueError(f"trainers={bad[0]} is not one: choose vanilla, stock or vanilla,stock")
    recipe = {k: v for k, v in settings.items() if k != "data"}
    print(f"recipe: {recipe}\ncriterion: top-1 above {bar} % at epoch {epoch}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            label, trainer_class = trainers[name]
            overrides = {**settings, "project": tmp, "name": name}
            if trainer_class is ClassificationTrainer:
                overrides.pop("method")
            curve, seconds = out[label] = top1_curve(trainer_class, overrides)
            ok = len(curve) >= epoch and curve[epoch - 1] > bar
            print(
                f"\n{label}: {'meets' if ok else 'FAILS'} the criterion, {seconds / 60:.1f} min (other jobs shared "
                f"the 2 cores), top-1 per epoch: " + " ".join(f"{v:.1f}" for v in curve),
                flush=True,
            )
    return out


if __name__ == "__main__":
    main()
