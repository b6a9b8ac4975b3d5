"""Does AdvAmd work? The paper's comparisons (Tables 1 and 3) on the embedded digits-det data, resumable.

    python benchmarks/reproduce.py --quick          # (a) vanilla, (b) Adv-Train, (c) AdvAmd at FGSM eps=0.01, ~20 min
    python benchmarks/reproduce.py                  # the full protocol: runs append to docs/results/results.jsonl,
    nohup python benchmarks/reproduce.py &          # finished runs are skipped, so it resumes where it stopped
    python benchmarks/reproduce.py --report         # only regenerate docs/RESULTS.md and the plot from the results file
    python benchmarks/reproduce.py --bench          # also run the step-cost and attack-speed benchmarks into the report
    python benchmarks/reproduce.py --quick --vary beta3=0.5 abar_norm=none   # (c) AdvAmd with other settings, as a
                                                    # row of its own against the same control ("what we tried")
    python benchmarks/reproduce.py --quick --seeds 0 1 2                     # (a), (b), (c) over three seeds

Protocol: train a target M_T (yolov8n, 160 px) from scratch, fine-tune it with every method for the same epochs
under one fixed schedule (AdamW, fixed lr0, no warmup, no mosaic, no gradient accumulation, same seed), then measure
benign and white-box adversarial mAP50-95 on val with `validate_advamd`. Every run is one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "results.jsonl"
REPORT = ROOT / "docs" / "RESULTS.md"
PLOT = ROOT / "docs" / "results" / "benign_vs_adv.png"
BENCH = ROOT / "docs" / "results" / "benchmarks.txt"  # the last --bench output, kept in every report
ABLATIONS = [dict(zip(("mediate", "aux_bn", "advamd_loss"), s)) for s in itertools.product((True, False), repeat=3)]
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
PROFILES = {
    "quick": {"target_epochs": 8, "fraction": 0.5, "ft_epochs": 2, "seeds": (0,), "train": [("fgsm", 0.01)],
              "eval": {"attacks": "fgsm,pgd", "eps": "0.01", "steps": 3}, "ablations": False},
    "full": {"target_epochs": 20, "fraction": 1.0, "ft_epochs": 4, "seeds": (0, 1, 2),
             "train": [("fgsm", 0.01), ("fgsm", 0.1), ("pgd", 0.01), ("pgd", 0.1)],
             "eval": {"attacks": "fgsm,pgd", "eps": "0.01,0.1", "steps": 10}, "ablations": True},
}  # fmt: skip


def method_name(s: dict) -> str:
    """Name a run's method: vanilla, advtrain, advamd, or the ablation row (M = mediate, B = aux BN, L = AdvAmd loss)."""
    if s["method"] != "advamd":
        return s["method"]
    on = "".join(k for k, v in zip("MBL", (s["mediate"], s["aux_bn"], s["advamd_loss"])) if v)
    return "advamd" if on == "MBL" else f"ablation-{on or 'none'}"


def plan(profile: dict, vary: dict | None = None) -> list[dict]:
    """Return every fine-tune run of a profile: (a), (b), (c) for every seed and attack, ablations at seed 0.

    With `vary` (settings to override), only (c) AdvAmd at the profile's first setting with those settings, and the
    control, for each seed.
    """
    if vary:
        attack, eps = profile["train"][0]
        off, on = (dict.fromkeys(("mediate", "aux_bn", "advamd_loss"), v) for v in (False, True))
        base = {"attack": attack, "eps": eps}
        return [run for seed in profile["seeds"] for run in (
            {**base, "seed": seed, "method": "vanilla", **off},
            {**base, "seed": seed, "method": "advamd", **on, **vary, "vary": vary},
        )]  # fmt: skip
    runs = []
    for attack, eps in profile["train"]:
        for seed in profile["seeds"] if (attack, eps) == profile["train"][0] else profile["seeds"][:1]:
            base = {"attack": attack, "eps": eps, "seed": seed}
            runs.append({**base, "method": "vanilla", "mediate": False, "aux_bn": False, "advamd_loss": False})
            runs.append({**base, "method": "advtrain", "mediate": False, "aux_bn": False, "advamd_loss": False})
            rows = ABLATIONS if profile["ablations"] and seed == profile["seeds"][0] else ABLATIONS[:1]
            runs += [{**base, "method": "advamd", **r} for r in rows if any(r.values())]
    unique = {key(r): r for r in runs}  # vanilla does not depend on the attack: train it once per seed
    return list(unique.values())


def key(run: dict) -> str:
    """A run's identity in the results file."""
    attack = "" if run["method"] == "vanilla" else f"{run['attack']}-{run['eps']}"
    vary = "".join(f"/{k}={v}" for k, v in run.get("vary", {}).items())
    return f"{method_name(run)}/{attack}/seed{run['seed']}{vary}"


def trained_on(e: dict) -> str:
    """The training setting of a recorded run, for the report: attack, ε and any varied settings."""
    if e["name"] == "vanilla":
        return "—"
    varied = (f"{k}={v}" for k, v in e.get("vary", {}).items() if k not in {"attack", "eps"})  # those are named first
    return " ".join([f"{e['attack']} ε={e['eps']}", *varied])


def load() -> list[dict]:
    """Return the recorded runs."""
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else []


def record(entry: dict) -> None:
    """Append one finished run to the results file."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(entry) + "\n")


def evaluate(weights: Path, data: str, profile: dict, name: str) -> dict:
    """Benign and adversarial mAP50-95 (%) of `weights`, per table column."""
    from yolo_advamd.validate import validate_advamd

    ev = profile["eval"]
    res = validate_advamd(str(weights), data, attacks=ev["attacks"], eps=ev["eps"], steps=ev["steps"], imgsz=160,
                          project=str(ROOT / "runs" / "reproduce-val"), name=name, exist_ok=True)  # fmt: skip
    return {col: 100 * s["metrics/mAP50-95(B)"] for col, s in res["rows"][0]["stats"].items()}


def train(overrides: dict) -> tuple[Path, float]:
    """Train with AdvAmdTrainer; return best.pt and the wall time in seconds."""
    from yolo_advamd.trainer import AdvAmdTrainer

    t = time.time()
    trainer = AdvAmdTrainer(overrides={**SCHEDULE, **overrides})
    trainer.train()
    return trainer.best, time.time() - t


def run_protocol(profile_name: str, vary: dict | None = None, seeds: list[int] | None = None) -> None:
    """Train M_T if needed, then every planned run not yet recorded, appending each as it finishes."""
    import yolo_advamd  # noqa: F401
    from yolo_advamd.cli import use_all_cores
    from yolo_advamd.data import resolve_dataset

    use_all_cores()
    profile = {**PROFILES[profile_name], **({"seeds": tuple(seeds)} if seeds else {})}
    data = resolve_dataset(str(ROOT / "data" / "digits-det.yaml"))
    project = str(ROOT / "runs" / f"reproduce-{profile_name}")
    done = {e["key"]: e for e in load() if e.get("profile") == profile_name}
    if "target" not in done:
        weights, seconds = train({"model": "yolov8n.yaml", "data": data, "method": "vanilla", "seed": 0,
                                  "epochs": profile["target_epochs"], "fraction": profile["fraction"], "lr0": 0.002,
                                  "close_mosaic": 2, "project": project, "name": "target"})  # fmt: skip
        done["target"] = {"key": "target", "profile": profile_name, "weights": str(weights), "train_seconds": seconds,
                          "map": evaluate(weights, data, profile, f"{profile_name}-target")}  # fmt: skip
        record(done["target"])
    target = done["target"]["weights"]
    if not Path(target).is_file():
        raise FileNotFoundError(
            f"the recorded M_T of profile {profile_name!r} ({target}) is not on disk, and every recorded fine-tune "
            f"started from it: restore it there, or move {RESULTS} aside to run the protocol from scratch"
        )
    for run in plan(profile, vary):
        if (k := key(run)) in done:
            continue
        name = k.replace("/", "_")
        settings = {k: v for k, v in run.items() if k != "vary"}
        weights, seconds = train({"model": target, "data": data, "epochs": profile["ft_epochs"], "lr0": 0.0005,
                                  "close_mosaic": profile["ft_epochs"], "fraction": profile["fraction"],
                                  "attack_model": "target", "abar_batches": 10, "project": project, "name": name,
                                  **settings})  # fmt: skip
        entry = {"key": k, "profile": profile_name, **run, "name": method_name(run), "train_seconds": seconds,
                 "weights": str(weights), "map": evaluate(weights, data, profile, f"{profile_name}-{name}")}  # fmt: skip
        record(entry)
        report()


def control(entries: list[dict], e: dict) -> dict | None:
    """The vanilla run of the same profile and seed as `e`."""
    return next((c for c in entries if c["name"] == "vanilla" and c["profile"] == e["profile"] and c["seed"] == e["seed"]), None)


def verdict(entries: list[dict]) -> list[str]:
    """One line per (profile, method, setting): mean Δ benign mAP50-95 vs the same-seed control, judged by its spread.

    "beats" / "is below" the control only when the mean Δ is more than one standard deviation over seeds from 0;
    with one seed there is no spread, so no verdict.
    """
    deltas = {}
    for e in entries:
        if e["name"] != "vanilla" and (c := control(entries, e)):
            deltas.setdefault((e["profile"], e["name"], trained_on(e)), []).append(e["map"]["benign"] - c["map"]["benign"])
    lines = []
    for (prof, name, trained), d in sorted(deltas.items()):
        mean = statistics.mean(d)
        if len(d) < 2:
            lines.append(f"- {prof}, {name} ({trained}): Δ benign = {mean:+.2f} on 1 seed (no spread: no verdict).")
            continue
        sd = statistics.stdev(d)
        word = "beats" if mean > sd else "is below" if mean < -sd else "is within the seed spread of"
        lines.append(f"- {prof}, {name} ({trained}): {word} the control on benign val, Δ = {mean:+.2f} ± {sd:.2f} "
                     f"over {len(d)} seeds.")  # fmt: skip
    return lines


def report() -> str:
    """Write docs/RESULTS.md and the plot from the results file (and the last benchmarks); return the Markdown."""
    entries = [e for e in load() if e["key"] != "target"]
    targets = [e for e in load() if e["key"] == "target"]
    cols = sorted({c for e in entries for c in e["map"]}, key=lambda c: (c != "benign", c))
    lines = ["# Results on the embedded digits-det data", "",
             "Generated by `benchmarks/reproduce.py` from `docs/results/results.jsonl`; numbers are whatever was",
             "measured. mAP50-95 in %, on val (500 scenes), benign through the main BN, adversarial = white-box",
             "attack on the evaluated model. Δ = method − the vanilla fine-tune of the same seed and profile (the",
             "control: same epochs, no attack). `train min`: wall time on 2 CPU cores, longer when other jobs",
             "shared the machine.", ""]  # fmt: skip
    for name, p in PROFILES.items():
        lines.append(f"Profile `{name}`: M_T = yolov8n from scratch, {p['target_epochs']} epochs on {p['fraction']:.0%} "
                     f"of the 2,000 train scenes at {SCHEDULE['imgsz']} px; every method fine-tunes it for "
                     f"{p['ft_epochs']} epochs (AdamW, lr0 5e-4, batch {SCHEDULE['batch']}, no warmup, no mosaic), "
                     f"attacking M_T; evaluation: {p['eval']['attacks']} at ε = {p['eval']['eps']}, "
                     f"PGD {p['eval']['steps']} steps.")  # fmt: skip
    lines.append("")
    for t in targets:
        lines.append(f"Target M_T ({t['profile']}): " + ", ".join(f"{c} {v:.2f}" for c, v in t["map"].items())
                     + f" ({t['train_seconds'] / 60:.1f} min).")  # fmt: skip
    lines += ["", "## Verdict: benign mAP50-95 of each method vs the control", ""]
    lines += verdict(entries) or ["No fine-tune recorded yet."]
    lines += ["", "## Δ mAP50-95 vs the control (Tables 1 and 3 analogue)", "",
              "| profile | method | trained on | seed | " + " | ".join(f"Δ {c}" for c in cols) + " | train min |",
              "|---" * (len(cols) + 5) + "|"]  # fmt: skip
    for e in sorted(entries, key=lambda e: (e["profile"], e["attack"], e["eps"], e["name"], trained_on(e), e["seed"])):
        c = control(entries, e)
        cells = [f"{e['map'][col] - c['map'][col]:+.2f}" if c and col in e["map"] and col in c["map"] else "" for col in cols]
        lines.append(f"| {e['profile']} | {e['name']} | {trained_on(e)} | {e['seed']} | " + " | ".join(cells)
                     + f" | {e['train_seconds'] / 60:.1f} |")  # fmt: skip
    lines += ["", "## Absolute mAP50-95, mean ± spread over seeds", "", "| profile | method | trained on | seeds | "
              + " | ".join(cols) + " |", "|---" * (len(cols) + 4) + "|"]  # fmt: skip
    groups = {}
    for e in entries:
        groups.setdefault((e["profile"], e["name"], trained_on(e)), []).append(e)
    for (prof, name, trained), es in sorted(groups.items()):
        def cell(col):
            v = [x["map"][col] for x in es if col in x["map"]]
            return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else (f"{v[0]:.2f}" if v else "")
        lines.append(f"| {prof} | {name} | {trained} | {len(es)} | " + " | ".join(cell(c) for c in cols) + " |")
    if BENCH.exists():
        lines += ["", "## Step cost and attack speed", "", "```", BENCH.read_text().strip(), "```"]
    lines += ["", "![benign vs adversarial mAP](results/benign_vs_adv.png)", ""]
    text = "\n".join(lines)
    REPORT.write_text(text)
    plot(groups)
    return text


def plot(groups: dict) -> None:
    """Plot benign vs mean adversarial mAP50-95 per method (mean over seeds; bars: benign spread over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    markers = "osD^v<>pPX*h"
    for i, ((prof, name, trained), es) in enumerate(sorted(groups.items())):
        adv = [v for e in es for c, v in e["map"].items() if c != "benign"]
        if not adv:
            continue
        benign = [e["map"]["benign"] for e in es]
        spread = statistics.stdev(benign) if len(benign) > 1 else 0.0
        ax.errorbar(statistics.mean(benign), statistics.mean(adv), xerr=spread, fmt=markers[i % len(markers)],
                    capsize=3, label=f"{name} {trained} ({prof}, {len(es)} seed{'s' * (len(es) > 1)})")  # fmt: skip
    ax.set_xlabel("benign mAP50-95 (%)")
    ax.set_ylabel("adversarial mAP50-95 (%), mean over attacks")
    ax.set_title("AdvAmd vs controls on digits-det")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


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
    opt = parser.parse_args()
    if not opt.report:
        vary = {}
        for arg in opt.vary or []:
            k, eq, v = arg.partition("=")
            if not eq:
                parser.error(f"--vary {arg}: give KEY=VALUE, e.g. --vary beta3=0.5")
            vary[k] = yaml.safe_load(v)
        from yolo_advamd.cfg import ADVAMD_DEFAULTS, check_advamd_cfg, merge_cfg

        try:
            check_advamd_cfg({**ADVAMD_DEFAULTS, **merge_cfg(vary)})  # a bad key or value fails now, not after M_T
            run_protocol("quick" if opt.quick else "full", vary, opt.seeds)
        except (SyntaxError, ValueError, FileNotFoundError) as e:
            parser.exit(2, f"reproduce.py: error: {e}\n")
    if opt.bench:
        BENCH.write_text(benchmarks())
    print(report())
