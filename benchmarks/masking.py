"""Is a defense's white-box robustness masked gradients? Score each recorded run of a method in the `full` profile on
val attacked through its same-seed control (a transfer attack, made on a model whose gradients are not masked),
beside its white-box scores and the control's.

A defense that masks gradients (defensive distillation: Carlini and Wagner, 2016) scores high under white-box attacks
on itself and falls under the transferred ones; a robust one keeps its score under both.

Usage:
    python benchmarks/masking.py                     # Def-Distill, FGSM and PGD-3 at eps 0.01, every seed recorded
                                                     # (the table also goes to docs/results/masking_<method>.txt)
    python benchmarks/masking.py method=distill eps=0.1
"""

from __future__ import annotations

import statistics
import sys

from study import paths
from study.records import control, load, on_disk
from study.runner import evaluate

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd.validate import column_name


def main(method: str = "distill", eps: float = 0.01) -> None:
    """Print, per seed and as means, the white-box and the transferred scores of `method`'s runs and the control's, and
    write them to docs/results/masking_<method>.txt."""
    from yolo_advamd.data import resolve_dataset

    data = resolve_dataset(str(paths.ROOT / "data" / "digits-det.yaml"))
    entries = [e for e in load() if e["profile"] == "full" and e["key"] != "target"]
    runs = sorted((e for e in entries if e["name"] == method and control(entries, e)), key=lambda e: e["seed"])
    if not runs:
        raise SystemExit(f"no run of method={method} with its control in the full profile: run reproduce.py first")
    cols = [column_name(a, eps) for a in ("fgsm", "pgd")]
    rows = []
    for e in runs:
        weights, defended = on_disk(e["weights"]), on_disk(control(entries, e)["weights"])
        if not (weights.is_file() and defended.is_file()):
            raise SystemExit(f"seed {e['seed']}: {weights} or {defended} is not on disk: reproduce.py --rerun retrains")
        transfer = evaluate(weights, data, [eps], f"masking-{method}-seed{e['seed']}", attack_model=defended)
        c = control(entries, e)["map"]
        rows.append([e["map"]["benign"], *(v for col in cols for v in (e["map"][col], transfer[col], c[col]))])
    heads = [f"{h} {a}" for a in ("FGSM", "PGD-3") for h in ("white-box", "transfer", "control white-box")]
    means = [statistics.mean(col) for col in zip(*rows)]
    lines = [
        f"method={method} eps={eps}: mAP50-95 (%) on val; transfer = attacks made on the same-seed control",
        f"{'seed':>6} {'benign':>8} " + " ".join(f"{h:>22}" for h in heads),
        *(
            f"{s:>6} {r[0]:>8.2f} " + " ".join(f"{v:>22.2f}" for v in r[1:])
            for s, r in zip([e["seed"] for e in runs] + ["mean"], rows + [means])
        ),
    ]
    out = paths.ROOT / "docs" / "results" / f"masking_{method}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n(written to {out})")


if __name__ == "__main__":
    settings = dict(arg.split("=", 1) if "=" in arg else (arg, None) for arg in sys.argv[1:])
    if unknown := set(settings) - {"method", "eps"}:
        raise SystemExit(f"unknown setting {sorted(unknown)[0]!r}: masking.py takes method=NAME and eps=VALUE")
    main(settings.get("method", "distill"), float(settings.get("eps", 0.01)))
