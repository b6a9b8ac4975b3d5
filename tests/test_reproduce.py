"""benchmarks/reproduce.py (the package benchmarks/study/): resumable (recorded runs are never trained again) and its
report computes Δ vs the control."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from study import arms, paths, plans, recommend, records, report, runner  # noqa: E402


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Point the script's results, report and plot at a temporary directory."""
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results.jsonl")
    monkeypatch.setattr(paths, "REPORT", tmp_path / "RESULTS.md")
    monkeypatch.setattr(paths, "PLOT", tmp_path / "plot.png")
    monkeypatch.setattr(paths, "BENCH", tmp_path / "benchmarks.txt")
    monkeypatch.setattr(paths, "DISCUSSION", tmp_path / "discussion.md")
    monkeypatch.setattr(paths, "RECOMMENDED", tmp_path / "recommended.yaml")
    monkeypatch.setattr(paths, "TARGETS", tmp_path / "targets")
    return tmp_path


def test_protocol_resumes_and_skips_recorded_runs(files, monkeypatch):
    trained = []

    def fake_train(overrides):
        trained.append(overrides["name"])
        assert "vary" not in overrides and overrides.get("beta3", 0.5) == 0.5
        weights = files / overrides["name"] / "weights" / "best.pt"  # laid out as Ultralytics does
        weights.parent.mkdir(parents=True, exist_ok=True)  # a run started anew reuses its folder
        weights.touch()
        (weights.parents[1] / "results.csv").write_text("epoch,time,metrics/mAP50-95(B)\n1,10,0.25\n2,20,0.5\n")
        return weights, 1.0

    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda w, d, eps, n: {"benign": 50.0, "fgsm eps=0.01": 20.0})
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    monkeypatch.setattr(paths, "ROOT", files)  # the repository: recorded paths are relative to it
    records.record(
        {
            "key": "vanilla//seed0",
            "profile": "quick",
            "name": "vanilla",
            "seed": 0,
            "method": "vanilla",
            "attack": "fgsm",
            "eps": 0.01,
            "train_seconds": 1,
            "weights": "v.pt",
            "map": {"benign": 50.0, "fgsm eps=0.01": 20.0},
        }
    )
    runner.run_protocol("quick")
    assert trained == ["target", "advtrain_fgsm-0.01_seed0", "advamd_fgsm-0.01_seed0"]  # vanilla was recorded
    target = next(e for e in records.load() if e["key"] == "target")
    assert target["weights"] == "targets/quick.pt" and (files / "targets" / "quick.pt").is_file()  # kept in the repo
    (files / "target" / "weights" / "best.pt").unlink()  # a fresh machine has no runs/: M_T's kept copy is enough
    trained.clear()
    runner.run_protocol("quick")  # everything recorded: nothing is trained again
    assert trained == []
    assert len(records.load()) == 4
    assert next(e for e in records.load() if e["key"] == "target")["curve"] == [25.0, 50.0]  # M_T's val mAP per epoch
    runner.run_protocol("quick", vary={"beta3": 0.5})  # a tried setting: (c) only, a row of its own
    assert trained == ["advamd_fgsm-0.01_seed0_beta3=0.5"]
    assert "| advamd | fgsm ε=0.01 beta3=0.5 | 0 | +0.00 | +0.00 |" in report.report()
    trained.clear()
    runner.run_protocol("quick", seeds=[0, 1])  # more seeds: only the new seed's (a), (b), (c) are trained
    assert trained == ["vanilla__seed1", "advtrain_fgsm-0.01_seed1", "advamd_fgsm-0.01_seed1"]
    # the weights every recorded fine-tune started from are gone: say so, train nothing
    (files / "targets" / "quick.pt").unlink()
    with pytest.raises(FileNotFoundError, match="recorded M_T of profile 'quick'"):
        runner.run_protocol("quick", seeds=[0, 1, 2])
    records.record(
        {
            "key": "target",
            "profile": "full",
            "weights": "targets/full.pt",
            "train_seconds": 60,
            "curve": [70.0, 80.0],
            "map": {"benign": 80.0},
        }
    )
    quick = [line for line in paths.RESULTS.read_text().splitlines() if '"profile": "quick"' in line]
    dest = records.archive("quick")  # --fresh: the profile's records are kept aside, other profiles stay
    assert dest.read_text().splitlines() == quick
    assert [e["profile"] for e in records.load()] == ["full"]
    trained.clear()
    runner.run_protocol("quick")  # anew: M_T first
    assert trained == ["target", "vanilla__seed0", "advtrain_fgsm-0.01_seed0", "advamd_fgsm-0.01_seed0"]
    again = records.archive("quick")
    assert again != dest and again.with_suffix(".pt").is_file()  # a new archive each time; M_T goes with its records


def test_report_deltas_are_against_the_same_seed_control(files):
    base = {"profile": "quick", "attack": "fgsm", "eps": 0.01, "train_seconds": 60}
    for seed, (van, amd) in enumerate([(50.0, 52.0), (48.0, 51.0)]):
        records.record(
            {**base, "key": f"v{seed}", "name": "vanilla", "seed": seed, "map": {"benign": van, "fgsm eps=0.01": 10.0}}
        )
        records.record(
            {**base, "key": f"a{seed}", "name": "advamd", "seed": seed, "map": {"benign": amd, "fgsm eps=0.01": 15.0}}
        )
    records.record(
        {
            "profile": "quick",
            "key": "target",
            "train_seconds": 60,
            "curve": [40.0, 48.0, 48.5, 49.0, 49.5, 50.0],
            "map": {"benign": 50.5, "fgsm eps=0.01": 5.0},
        }
    )
    paths.BENCH.write_text("fgsm  1318 ms  3.79x stock")  # the last --bench tables stay in every report
    paths.DISCUSSION.write_text("## What the numbers say\n\nAdvAmd is below the control here.")  # and the reading
    text = report.report()
    assert "## Step cost and attack speed" in text and "3.79x stock" in text
    assert text.index("AdvAmd is below the control here.") < text.index("## Profile `quick`")
    rows = [line for line in text.splitlines() if line.startswith("| advamd | fgsm")]
    assert "| +2.00 | +5.00 |" in rows[0] and "| +3.00 | +5.00 |" in rows[1]
    assert "51.50 ± 0.71" in text  # mean ± stdev over the two seeds
    assert "advamd (fgsm ε=0.01): beats the control on benign val, Δ = +2.50 ± 0.71 over 2 seeds; vs M_T +1.00." in text
    assert "| M_T (start) | — | — | 50.50 | 5.00 |" in text  # where every fine-tune started
    assert "(+0.50 points an epoch: near a plateau, still gaining)" in text  # least squares over the last 5 epochs
    assert (files / "plot.png").stat().st_size > 0
    assert json.loads(paths.RESULTS.read_text().splitlines()[0])["key"] == "v0"


def test_full_plan_covers_table3_at_every_setting_and_controls_gain_new_budgets(files, monkeypatch):
    full = arms.PROFILES["full"]
    runs = plans.plan(full)
    assert len({plans.key(r) for r in runs}) == len(runs)
    for attack, eps in full["train"]:  # Adv-Train and the seven Table 3 rows at every attack and budget
        names = {plans.method_name(r) for r in runs if (r.get("attack"), r.get("eps"), r["seed"]) == (attack, eps, 0)}
        assert names >= {"advtrain", "advamd", *(f"ablation-{r}" for r in arms.TABLE3[:-1])}
        assert all(r["steps"] == arms.TRAIN_STEPS[attack] for r in runs if r.get("attack") == attack)
    control = runs[0]  # evaluated at every budget, and at a varied one, so a --vary eps=... row has its Δ adv
    assert plans.eval_eps(control, full) == [0.01, 0.1] and plans.eval_eps(runs[1], full) == [0.01]
    assert plans.eval_eps(control, full, {"eps": 0.003}) == [0.003, 0.01, 0.1]
    first = [plans.method_name(r) for r in runs[:9]]  # (a), (b), (c) over three seeds come first
    assert first == ["vanilla", "advtrain", "advamd"] * 3 and [r["seed"] for r in runs[:9:3]] == [0, 1, 2]

    asked = []
    monkeypatch.setattr(
        runner, "evaluate", lambda w, d, eps, n: asked.append(eps) or {"benign": 1.0, "fgsm eps=0.1": 5.0}
    )
    (files / "v.pt").touch()
    entry = {
        "key": "vanilla//seed0",
        "profile": "full",
        "name": "vanilla",
        "seed": 0,
        "weights": str(files / "v.pt"),
        "map": {"benign": 50.0, "fgsm eps=0.01": 20.0},
    }
    records.record(entry)
    done = runner.complete(entry, [0.01, 0.1], "data.yaml")
    assert asked == [[0.1]]  # only the missing budget is evaluated; the recorded columns are kept
    assert done["map"] == {"benign": 50.0, "fgsm eps=0.01": 20.0, "fgsm eps=0.1": 5.0}
    loaded = records.load()
    assert "commit" in loaded[0]  # each record names the code that made it
    loaded[0].pop("commit")
    assert loaded == [done]  # the later record of a key replaces the earlier one
    assert runner.complete(done, [0.01, 0.1], "data.yaml") == done and asked == [[0.1]]
    # a fine-tune's weights stay on the machine that trained it: without them, keep the record
    (files / "v.pt").unlink()
    assert runner.complete(done, [0.01, 0.03, 0.1], "data.yaml") == done and asked == [[0.1]]


def test_paper_table_pairs_each_training_setting_with_the_same_attack(files):
    base = {"profile": "full", "train_seconds": 60, "seed": 0}
    records.record(
        {
            **base,
            "key": "v",
            "name": "vanilla",
            "attack": "fgsm",
            "eps": 0.01,
            "map": {"benign": 50.0, "fgsm eps=0.01": 10.0, "pgd eps=0.1": 1.0},
        }
    )
    records.record(
        {
            **base,
            "key": "a",
            "name": "advamd",
            "attack": "pgd",
            "eps": 0.1,
            "steps": 3,
            "map": {"benign": 49.0, "fgsm eps=0.1": 9.0, "pgd eps=0.1": 8.0},
        }
    )
    text = report.report()
    # as in the paper, Δ adv is the attacked score minus the baseline (the control's benign score): 8 - 50
    assert "| method | M | B | L | Δ adv, pgd-3 ε=0.1 | Δ benign, pgd-3 ε=0.1 |" in text
    assert "| advamd | ✓ | ✓ | ✓ | -42.00 | -1.00 |" in text
    assert "| ablation-ML | ✓ |  | ✓ |  |  |" in text
    assert "| None | -49.00 | +0.00 |" in text  # Table 1's first row: the control attacked, against its own benign


def test_study_screens_every_arm_on_seed_0_then_confirms_the_promising_methods(files):
    runs = plans.study_plan([])
    screen = [r for r in runs if r[2] == 0]
    assert screen == [(arm, label, 0) for arm, a in arms.STUDY.items() for label in a["methods"]]
    confirmed = ("vanilla", "advamd", "advtrain", "advamd current")  # the retrain arm's `confirm`, round 2 included
    assert [r for r in runs if r[2] > 0] == [("retrain", m, s) for s in (1, 2) for m in confirmed]
    record = {"profile": "scratch", "train_seconds": 1, "seed": 0}
    screened = [
        {**record, "key": "vanilla/seed0", "name": "vanilla", "map": {"benign": 50.0}},
        {**record, "key": "advamd/seed0", "name": "advamd", "map": {"benign": 49.6}},  # Δ -0.4: confirmed
        {**record, "key": "detadvprop/seed0", "name": "detadvprop", "map": {"benign": 49.4}},
    ]  # Δ -0.6: not
    confirmed = [r for r in plans.study_plan(screened) if r[0] == "scratch" and r[2] > 0]
    assert confirmed == [("scratch", m, s) for s in (1, 2) for m in ("vanilla", "advamd")]
    tasks = plans.study_plan([], arms.TASKS)  # the other tasks: every method at seed 0, or at the arm's seeds
    assert tasks == [(t, m, 0) for t, a in arms.TASKS.items() for m in a["methods"]] + [
        ("cls-r2", m, s) for s in (1, 2) for m in ("vanilla", "advamd", "aux-BN only", "advamd attack_labels=pred")
    ]
    assert all({"vanilla", "advamd"} <= set(a["methods"]) for a in arms.TASKS.values())


def test_study_records_each_run_once_with_its_arm_start_curves_and_scores_through_m_t(files, monkeypatch, capsys):
    trained, through_target = [], []

    def fake_evaluate(weights, data, eps, name, imgsz=160, attack_model=None, shifted=False):
        """White-box attacks score 20; attacks made on M_T (transfer) 80 in FGSM, 70 in PGD; with shifted labels 60."""
        if attack_model:
            through_target.append(name)
            assert attack_model == files / "targets" / "full.pt"
            fgsm, pgd = (60.0, 60.0) if shifted else (80.0, 70.0)
            return {"benign": 50.0, **{f"{a} eps={e:g}": s for e in eps for a, s in (("fgsm", fgsm), ("pgd", pgd))}}
        assert not shifted  # labels are shifted only in attacks made on M_T
        return {"benign": 50.0, **{f"fgsm eps={e:g}": 20.0 for e in eps}}

    def fake_train(overrides):
        trained.append((overrides["project"].rsplit("-", 1)[-1], overrides["name"], overrides.get("method")))
        run = files / "runs" / overrides["name"]
        (run / "weights").mkdir(parents=True, exist_ok=True)
        (run / "weights" / "best.pt").touch()
        (run / "results.csv").write_text(
            "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/mAP50-95(B)\n"
            "1,10,1.0,1.0,1.0,0.5\n2,20,0.5,0.5,0.5,0.6\n"
        )
        return run / "weights" / "best.pt", 20.0

    monkeypatch.setattr(paths, "ROOT", files)
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    monkeypatch.setattr(runner, "evaluate_corruptions", lambda w, d, n, imgsz=160: {"mPC": 30.0, "rPC": 60.0})
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    monkeypatch.setitem(
        arms.STUDY,
        "retrain",
        {**arms.STUDY["retrain"], "methods": {k: arms.STUDY["retrain"]["methods"][k] for k in ("vanilla", "advamd")}},
    )
    (files / "targets").mkdir()
    (files / "targets" / "full.pt").touch()  # M_T, kept in the repository
    runner.run_study(["retrain"])
    assert trained == [("retrain", f"{m}_seed{s}", m) for s in (0, 1, 2) for m in ("vanilla", "advamd")]
    by_key = {e["key"]: e for e in records.load() if e["profile"] == "retrain"}
    assert by_key["start"]["map"] == {"benign": 50.0, "fgsm eps=0.01": 20.0}  # M_T at the arm's budgets
    amd = by_key["advamd/seed0"]
    assert amd["settings"]["model"] == "targets/full.pt" and amd["settings"]["abar_scope"] == "positive"
    assert amd["curve"] == [50.0, 60.0] and amd["train_loss"] == [3.0, 1.5] and amd["eps"] == 0.01
    assert amd["epoch_seconds"] == [10.0, 10.0] and amd["machine"] == runner.machine()  # timed here
    assert amd["transfer"] == {"fgsm eps=0.01": 80.0, "pgd eps=0.01": 70.0}  # attacked through M_T, without benign
    assert amd["leak"] == {"fgsm eps=0.01": 60.0, "pgd eps=0.01": 60.0}  # ... with every class moved to the next
    assert "start" not in {e["key"] for e in records.load() if "transfer" in e}  # M_T on itself is white-box
    trained.clear()
    runner.run_study(["retrain"])  # everything recorded: nothing is trained again
    assert trained == []
    text = report.report()
    assert "| retrain | advamd | 3 | +0.00 ± 0.00 | +0.00 ± 0.00 |" in text
    assert (
        "vanilla 80.00 / 70.00 at ε = 0.01 (3 seeds) → 60.00 / 60.00 at ε = 0.01 (3 seeds); advamd 80.00 / 70.00 "
        "at ε = 0.01 (3 seeds) → 60.00 / 60.00 at ε = 0.01 (3 seeds)."
    ) in text

    # a run recorded before its arm measured through M_T gets the maps it lacks on the next pass, once, if its weights
    # are still there
    kept, gone = ({**by_key[f"{label}/seed0"], "key": f"{label}/seed7", "seed": 7} for label in ("advamd", "vanilla"))
    del kept["leak"], gone["transfer"], gone["leak"]
    gone["weights"] = "runs/deleted/weights/best.pt"
    for e in (kept, gone):
        records.record(e)
    through_target.clear()
    runner.run_study(["retrain"])
    assert trained == [] and through_target == ["retrain-advamd_seed7-leak"]  # only what is missing is measured
    after = {e["key"]: e for e in records.load() if e["profile"] == "retrain"}
    assert after["advamd/seed7"]["leak"] == {"fgsm eps=0.01": 60.0, "pgd eps=0.01": 60.0}
    assert "transfer" not in after["vanilla/seed7"] and "are gone: left as is" in capsys.readouterr().out


def finished_run(run: Path) -> tuple[Path, float]:
    """What a finished training leaves for the runner: best.pt and a one-epoch results.csv; its best.pt and time."""
    (run / "weights").mkdir(parents=True, exist_ok=True)
    (run / "weights" / "best.pt").touch()
    (run / "results.csv").write_text("epoch,time,train/box_loss,metrics/mAP50-95(B)\n1,10,1.0,0.5\n")
    return run / "weights" / "best.pt", 10.0


def test_study_runs_get_a_corruption_map_backfilled_while_their_weights_exist_and_the_report_its_delta(
    files, monkeypatch, capsys
):
    """Every study run gets mPC / rPC (COCO-C) once: new runs when they finish, older ones after the planned runs if
    their weights are on disk; "Where does it lift?" then shows Δ mPC vs the same-seed vanilla run (and none before)."""
    measured = []

    def fake_corruptions(weights, data, name, imgsz=160):
        """mPC 30 for vanilla runs, 33 for the others."""
        measured.append(name)
        mpc = 30.0 if "vanilla" in name else 33.0
        return {"benign": 50.0, "fog s1": mpc, "mPC": mpc, "rPC": 100 * mpc / 50}

    def fake_train(overrides):
        return finished_run(files / "runs" / overrides["name"])

    monkeypatch.setattr(paths, "ROOT", files)
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda w, d, eps, n, imgsz=160, *a: {"benign": 50.0})
    monkeypatch.setattr(runner, "evaluate_corruptions", fake_corruptions)
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    scratch = {
        **arms.STUDY["scratch"],
        "methods": {k: arms.STUDY["scratch"]["methods"][k] for k in ("vanilla", "detadvprop")},
    }
    monkeypatch.setitem(arms.STUDY, "scratch", scratch)
    old = [
        {
            "profile": "scratch",
            "key": f"{label}/seed0",
            "name": label,
            "seed": 0,
            "settings": {},
            "attack": "fgsm",
            "eps": 1 / 255,
            "weights": f"runs/old-{label}/weights/best.pt",
            "train_seconds": 1,
            "epoch_seconds": [1.0],
            "map": {"benign": 50.0},
        }
        for label in ("vanilla", "detadvprop")
    ]
    for e in old:
        records.record(e)
    assert "Δ mPC" not in report.report()  # no corruption map yet: the report as before
    (files / "runs" / "old-vanilla" / "weights").mkdir(parents=True)
    (files / "runs" / "old-vanilla" / "weights" / "best.pt").touch()  # detadvprop's weights are gone
    runner.run_study(["scratch"])
    assert measured[-1] == "scratch-vanilla_seed0-corruption" and "are gone: left as is" in capsys.readouterr().out
    by_key = {e["key"]: e for e in records.load() if e["profile"] == "scratch"}
    assert by_key["vanilla/seed0"]["corruption"]["mPC"] == 30.0 and "corruption" not in by_key["detadvprop/seed0"]
    assert by_key["detadvprop/seed1"]["corruption"] == {"benign": 50.0, "fog s1": 33.0, "mPC": 33.0, "rPC": 66.0}
    assert len(measured) == 5  # the 4 new runs (seeds 1, 2) once each, then vanilla seed 0 backfilled
    measured.clear()
    runner.run_study(["scratch"])
    assert measured == []  # every map recorded (or its weights gone): nothing measured again
    text = report.report()
    assert "| arm | method | seeds | Δ benign | Δ FGSM | Δ PGD-3 | Δ mPC | Δ rPC | vs M_T |" in text
    assert "| scratch | vanilla (absolute) | 3 | 50.00 ± 0.00 | | | 30.00 ± 0.00 | 60.00 ± 0.00 |  | 1.00 | |" in text
    assert "| scratch | detadvprop | 3 | +0.00 ± 0.00 |  |  | +3.00 ± 0.00 | +6.00 ± 0.00 |  | 1.00 |" in text


def test_capacity_arm_scales_the_arm_that_came_closest_to_a_lift_once_every_screen_is_in(files, monkeypatch):
    def screen(best: tuple[str, str]) -> list[dict]:
        return [
            {
                "profile": arm,
                "key": f"{label}/seed0",
                "name": label,
                "seed": 0,
                "train_seconds": 1,
                "attack": "fgsm",
                "eps": 0.01,
                "epoch_seconds": [1.0],
                "map": {"benign": 50.5 if (arm, label) == best else 50.0},
            }
            for arm, a in arms.STUDY.items()
            for label in a["methods"]
        ]

    screened = screen(("scratch", "detadvprop"))
    assert plans.capacity_arm(screened[1:]) == {}  # one screen run missing: not chosen yet
    with pytest.raises(ValueError, match="capacity arm is chosen once every other study arm's seed 0 is recorded"):
        plans.study_arms(screened[1:], ["capacity"])
    arm = plans.capacity_arm(screened)["capacity"]
    assert arm["start"] == "yolov8s.yaml" and list(arm["methods"]) == ["vanilla", "detadvprop"]
    late = [e for e in screened if (e["profile"], e["name"]) in arms.ROUND_2]  # added after the rule was applied
    assert late and plans.capacity_arm([e for e in screened if e not in late]) == {"capacity": arm}
    for e in late:
        e["map"]["benign"] = 52.0  # closer to a lift than detadvprop: the arm chosen before stays
    assert plans.capacity_arm(screened) == {"capacity": arm}
    assert arm["recipe"] == arms.STUDY["scratch"]["recipe"] and "Δ benign +0.50" in arm["about"]

    trained = []

    def fake_train(overrides):
        trained.append((overrides["project"].rsplit("-", 1)[-1], overrides["name"], overrides["model"]))
        run = files / "runs" / overrides["name"]
        (run / "weights").mkdir(parents=True, exist_ok=True)
        (run / "weights" / "best.pt").write_text(overrides["name"])
        (run / "results.csv").write_text("epoch,time,train/box_loss,metrics/mAP50-95(B)\n1,10,1.0,0.5\n")
        return run / "weights" / "best.pt", 10.0

    monkeypatch.setattr(paths, "ROOT", files)
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda w, d, eps, n, imgsz=160: {"benign": 40.0})
    monkeypatch.setattr(runner, "evaluate_corruptions", lambda w, d, n, imgsz=160: {"mPC": 30.0, "rPC": 75.0})
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    for e in screen(("teacher", "udfa")):  # from M_T: the capacity arm trains an M_T of yolov8s first, and keeps it
        records.record(e)
    runner.run_study(["capacity"])
    kept = str(files / "targets" / "full-yolov8s.pt")
    assert trained[:3] == [
        ("targets", "full-yolov8s", "yolov8s.yaml"),
        ("capacity", "vanilla_seed0", kept),
        ("capacity", "udfa_seed0", kept),
    ]
    assert (files / "targets" / "full-yolov8s.pt").read_text() == "full-yolov8s"
    start = next(e for e in records.load() if (e["profile"], e["key"]) == ("capacity", "start"))
    assert start["weights"] == "targets/full-yolov8s.pt" and start["curve"] == [50.0] and start["train_seconds"] == 10
    assert "| capacity | udfa | 3 |" in report.report()  # Δ 0 on seed 0 earned seeds 1 and 2


def test_an_interrupted_run_resumes_and_its_time_sums_the_pieces(files, monkeypatch):
    import yolo_advamd.trainer

    made = []

    class FakeTrainer:
        def __init__(self, overrides):
            made.append(overrides)
            self.best = files / "run" / "weights" / "best.pt"

        def train(self):
            pass

    monkeypatch.setattr(yolo_advamd.trainer, "advamd_trainer", FakeTrainer)
    (files / "run" / "weights").mkdir(parents=True)
    (files / "run" / "results.csv").write_text("epoch,time\n1,10\n2,20\n3,5\n4,12\n")  # resumed after epoch 2
    torch.save({"epoch": 1}, files / "run" / "weights" / "last.pt")  # stopped mid-run
    _, seconds = runner.train({"project": str(files), "name": "run", "epochs": 4})
    assert made == [{"resume": str(files / "run" / "weights" / "last.pt")}] and seconds == 32
    assert runner.epoch_seconds(files / "run" / "results.csv") == [10, 10, 5, 7]  # the resumed piece's first: 5
    torch.save({"epoch": -1}, files / "run" / "weights" / "last.pt")  # finished, not recorded yet: nothing to train
    assert runner.train({"project": str(files), "name": "run"})[0] == files / "run" / "weights" / "best.pt"
    assert len(made) == 1


def test_wall_ratio_is_of_median_epochs_on_the_same_machine_so_other_jobs_and_machines_do_not_count():
    control = {"name": "vanilla", "seed": 0, "machine": "a", "epoch_seconds": [10, 10, 100, 10, 10]}  # one shared epoch
    run = {"name": "advamd", "seed": 0, "machine": "a", "epoch_seconds": [30] * 5}
    assert report.wall_ratio(run, [control, run]) == 3.0
    faster = {**control, "seed": 1, "machine": "b", "epoch_seconds": [5] * 5}  # seed 1's vanilla, on a faster machine
    assert report.wall_ratio({**run, "machine": "b"}, [control, faster]) == 6.0  # not seed 0's, timed elsewhere
    assert report.wall_ratio({**run, "machine": "c"}, [control, faster]) is None
    assert runner.machine() == runner.machine() != ""


def test_overfitting_is_a_fall_from_the_val_peak_beyond_noise_while_the_training_loss_falls():
    rising = [50 + 0.1 * i + 0.3 * (i % 2) for i in range(40)]  # noisy, still climbing: peaks near the end
    run = {"seed": 0, "curve": rising, "train_loss": [2 - 0.01 * i for i in range(40)]}
    assert "(no overfitting: the end is within twice the epoch-to-epoch noise" in report.overfit(run)
    peaked = [50 + i for i in range(20)] + [69 - 0.5 * i for i in range(20)]  # peaks at epoch 20, then falls
    assert report.overfit({**run, "curve": peaked}).endswith("(overfitting).")
    assert "the training loss stopped falling" in report.overfit({**run, "curve": peaked, "train_loss": [1.0] * 40})


def test_old_records_with_absolute_paths_are_found_under_this_repository(files, monkeypatch):
    monkeypatch.setattr(paths, "ROOT", files)
    (files / "runs" / "x" / "weights").mkdir(parents=True)
    (files / "runs" / "x" / "weights" / "best.pt").touch()
    assert records.on_disk("/elsewhere/repo/runs/x/weights/best.pt") == files / "runs" / "x" / "weights" / "best.pt"
    assert records.on_disk("runs/x/weights/best.pt") == files / "runs" / "x" / "weights" / "best.pt"
    kept = ROOT / "docs" / "results" / "results.jsonl"  # the repository's own records
    weights = [json.loads(line)["weights"] for line in kept.read_text().splitlines()]
    assert weights and not [w for w in weights if Path(w).is_absolute()]


def test_recommendation_follows_the_fixed_rule_and_writes_a_loadable_hyp(files):
    """No lift anywhere: the robust method with the least benign cost; a lift over 3 seeds wins over any robustness."""
    from yolo_advamd.cfg import resolve_advamd_cfg
    from yolo_advamd.validate import column_name

    def run(arm, name, seed, benign, fgsm, eps=0.01):
        col = column_name("fgsm", eps)
        records.record(
            {
                "profile": arm,
                "key": f"{name}/seed{seed}",
                "name": name,
                "seed": seed,
                "eps": eps,
                "attack": "fgsm",
                "train_seconds": 10,
                "epoch_seconds": [10.0],
                "map": {"benign": benign, col: fgsm},
            }
        )

    for seed in range(3):
        run("retrain", "vanilla", seed, 80.0, 40.0)
        run("retrain", "advamd", seed, 79.0, 45.0)  # robust, costs 1.0
        run("retrain", "aux-BN only", seed, 79.5, 39.0)  # costs less, but loses robustness
    assert recommend.recommend(records.load())[:2] == ("retrain", "advamd")
    for seed, gain in enumerate((0.9, 1.1, 1.0)):
        run("retrain", "advtrain", seed, 80.0 + gain, 41.0)  # a lift of 1.0 ± 0.1
    arm, label, why = recommend.recommend(records.load())
    assert (arm, label) == ("retrain", "advtrain") and "lift of +1.00 ± 0.10 over 3 seeds" in why
    report.report()
    hyp = paths.RECOMMENDED.read_text()
    assert hyp.startswith("# Recommended by benchmarks/reproduce.py") and "method: advtrain" in hyp
    assert resolve_advamd_cfg({"hyp": str(paths.RECOMMENDED)})["method"] == "advtrain"  # a valid hyp file


def test_round_2_rule_counts_a_lift_on_mpc_and_refuses_one_paid_for_on_the_other(files):
    """A lift on benign or on mPC (the corruption benchmark), over 3 seeds, never bought with a loss beyond the spread
    on the other; the largest mean Δ wins."""

    def run(name, seed, benign, mpc):
        records.record(
            {
                "profile": "retrain",
                "key": f"{name}/seed{seed}",
                "name": name,
                "seed": seed,
                "eps": 0.01,
                "attack": "fgsm",
                "train_seconds": 10,
                "epoch_seconds": [5.0, 5.0],
                "map": {"benign": benign, "fgsm eps=0.01": 40.0},
                "corruption": {"mPC": mpc, "rPC": mpc / benign},
            }
        )

    for seed, (a, b, c) in enumerate(((0.9, 1.9, -0.15), (1.1, 2.1, 0.05), (1.0, 2.0, -0.05))):
        run("vanilla", seed, 80.0, 50.0)
        run("advtrain", seed, 80.0 + 3 * a, 50.0 - b)  # benign +3.0 ± 0.3, but mPC -2.0 ± 0.1: no lift
        run("advamd", seed, 80.0 + c, 50.0 + b)  # mPC +2.0 ± 0.1 at benign -0.05 ± 0.10 (within the spread): a lift
    arm, label, why = recommend.recommend(records.load())
    assert (arm, label) == ("retrain", "advamd")
    assert why == "an mPC lift of +2.00 ± 0.10 over 3 seeds, the largest measured (benign -0.05 ± 0.10)"
    assert recommend.lift(recommend.deltas(records.load(), "retrain", "advtrain"), "benign") == ""
    assert recommend.lift({"benign": [1.0, 1.2], "mpc": []}, "benign") == ""  # above its spread, but 2 seeds: no lift
    table = report.report().split("## Where does it lift?")[1]  # the report's verdicts follow the same rule
    verdicts = {
        row.split(" | ")[1]: row.rsplit("|", 2)[1].strip() for row in table.splitlines() if "| retrain |" in row
    }
    assert verdicts["advamd"] == "**lift** on mPC" and verdicts["advtrain"] == "above the spread, paid for on mPC"


def test_the_classification_arm_counts_for_the_recommendation_and_its_hyp_names_its_data(files):
    """Round 2's classification arm (`cls-r2`, a task arm of 3 seeds) is one of the arms the rule chooses from: its
    mPC lift is recommended, and hyps/recommended.yaml says it was measured on digits-cls."""
    for seed, (b, m) in enumerate(((0.5, 11.0), (-0.3, 12.5), (0.1, 11.8))):
        for name, benign, mpc in (("vanilla", 97.0, 68.0), ("advamd attack_labels=pred", 97.0 + b, 68.0 + m)):
            records.record(
                {
                    "profile": "cls-r2",
                    "key": f"{name}/seed{seed}",
                    "name": name,
                    "seed": seed,
                    "attack": "fgsm",
                    "eps": 0.01,
                    "settings": {},
                    "train_seconds": 10,
                    "map": {"benign": benign},
                    "corruption": {"mPC": mpc, "rPC": mpc / benign},
                }
            )
    arm, label, why = recommend.recommend(records.load())
    assert (arm, label) == ("cls-r2", "advamd attack_labels=pred") and why.startswith("an mPC lift of +11.77")
    control = {"profile": "retrain", "key": "vanilla/seed0", "name": "vanilla", "seed": 0, "map": {"benign": 88.0}}
    records.record({**control, "settings": {}, "train_seconds": 10})  # a study arm's run: the study's section
    assert "**Recommended**" in report.report()
    hyp = paths.RECOMMENDED.read_text()
    assert "# Regime on digits-cls: " in hyp and yaml.safe_load(hyp)["attack_labels"] == "pred"


def test_rerun_trains_again_the_runs_whose_weights_are_gone_and_keeps_their_first_scores(files, monkeypatch):
    """`--study ARM --rerun vanilla`: a recorded vanilla run whose weights are gone is trained again with its name
    and recorded anew (its first scores under `rerun_of`, then backfilled maps); a run whose weights exist, and the
    other methods' runs, are left alone; the report says what moved."""
    trained = []

    def fake_train(overrides):
        trained.append(overrides["name"])
        return finished_run(files / "runs" / overrides["name"])

    monkeypatch.setattr(paths, "ROOT", files)
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda w, d, eps, n, imgsz=160, *a: {"benign": 51.0})
    monkeypatch.setattr(runner, "evaluate_corruptions", lambda w, d, n, imgsz=160: {"mPC": 30.0, "rPC": 60.0})
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    scratch = {
        **arms.STUDY["scratch"],
        "methods": {k: arms.STUDY["scratch"]["methods"][k] for k in ("vanilla", "detadvprop")},
    }
    monkeypatch.setitem(arms.STUDY, "scratch", {**scratch, "screen": False, "seeds": (0, 1)})
    for label, seed in (("vanilla", 0), ("vanilla", 1), ("detadvprop", 0), ("detadvprop", 1)):
        records.record(
            {
                "profile": "scratch",
                "key": f"{label}/seed{seed}",
                "name": label,
                "seed": seed,
                "settings": {},
                "attack": "fgsm",
                "eps": 1 / 255,
                "weights": f"runs/old-{label}{seed}/weights/best.pt",
                "train_seconds": 1,
                "epoch_seconds": [1.0],
                "map": {"benign": 50.0},
                "corruption": {"mPC": 29.0, "rPC": 58.0},
            }
        )
    (files / "runs" / "old-vanilla1" / "weights").mkdir(parents=True)
    (files / "runs" / "old-vanilla1" / "weights" / "best.pt").touch()  # vanilla seed 1 kept its weights

    def interrupted(overrides):
        """Stopped midway: Ultralytics has written a best.pt of the epochs so far, nothing is recorded."""
        finished_run(files / "runs" / overrides["name"])
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(["scratch"], rerun=("vanilla",))
    monkeypatch.setattr(runner, "train", fake_train)
    runner.run_study(["scratch"], rerun=("vanilla",))  # started again: still a rerun, in the same folder
    assert trained == ["vanilla_seed0_rerun"]  # detadvprop's weights are gone too, but it was not asked for
    by_key = {e["key"]: e for e in records.load()}
    again = by_key["vanilla/seed0"]
    assert again["map"]["benign"] == 51.0 and again["rerun_of"]["map"] == {"benign": 50.0}
    assert again["weights"] == "runs/vanilla_seed0_rerun/weights/best.pt" and "rerun_of" not in by_key["vanilla/seed1"]
    runner.run_study(["scratch"], rerun=("vanilla",))
    assert trained == ["vanilla_seed0_rerun"]  # its weights are on disk now: not trained a third time
    assert (
        "Trained again with the same settings" in report.report() and "vanilla seed 0 50.00 → 51.00" in report.report()
    )


def test_command_line_keeps_its_options_and_refuses_a_bad_one_before_any_work():
    """benchmarks/reproduce.py, run as a user runs it: its options are all there, every arm of the package is offered,
    and an unknown arm or a --vary without "=" fails in one line with exit code 2, before anything is written."""
    script = [sys.executable, str(ROOT / "benchmarks" / "reproduce.py")]
    usage = subprocess.run([*script, "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--quick", "--report", "--bench", "--vary", "--seeds", "--fresh", "--study", "--rerun"):
        assert option in usage
    report_time = (ROOT / "docs" / "RESULTS.md").stat().st_mtime_ns
    errors = []
    for args in (["--study", "nowhere"], ["--quick", "--vary", "beta3"]):
        run = subprocess.run([*script, *args], capture_output=True, text=True)
        assert run.returncode == 2 and not run.stdout
        errors.append(run.stderr.splitlines()[-1])
    assert errors[0].startswith("reproduce.py: error: argument --study: invalid choice: 'nowhere' (choose from")
    assert all(f"'{arm}'" in errors[0] for arm in [*arms.ARMS, "capacity"])
    assert errors[1] == "reproduce.py: error: --vary beta3: give KEY=VALUE, e.g. --vary beta3=0.5"
    assert (ROOT / "docs" / "RESULTS.md").stat().st_mtime_ns == report_time  # no report was written


def test_tasks_table_shows_mpc_rpc_and_their_delta_against_the_same_seed_vanilla():
    """The other tasks' table gains mPC, rPC and their Δ once a run has a corruption map; before, it is as it was."""

    def run(name, benign, mpc=None):
        entry = {
            "profile": "cls-r2",
            "key": f"{name}/seed0",
            "name": name,
            "seed": 0,
            "train_seconds": 60,
            "map": {"benign": benign},
        }
        return {**entry, "corruption": {"mPC": mpc, "rPC": 100 * mpc / benign}} if mpc else entry

    plain = report.tasks_section([run("vanilla", 90.0), run("advamd", 91.0)])
    assert not any("mPC" in line for line in plain)
    lines = report.tasks_section([run("vanilla", 90.0, 45.0), run("advamd", 91.0, 54.6)])
    assert "| mPC | rPC | Δ mPC | Δ rPC |" in lines[4]
    assert "| cls-r2 | vanilla | 90.00 |  |  |  |  |  | 45.00 | 50.00 |  |  | 1.0 |" in lines
    assert "| cls-r2 | advamd | 91.00 |  |  | +1.00 |  |  | 54.60 | 60.00 | +9.60 | +10.00 | 1.0 |" in lines


def test_full_profile_trains_def_distill_on_every_seed_without_an_attack_and_tables_it_in_the_papers_layout(
    files, monkeypatch
):
    """Table 1's Def-Distill row: one fine-tune per seed of the full profile, no attack settings (which distillation
    refuses), evaluated at every ε like the control; its Δ adv per attack and its Δ benign in every column."""
    from yolo_advamd.cfg import resolve_advamd_cfg
    from yolo_advamd.methods import METHODS
    from yolo_advamd.validate import column_name

    full = arms.PROFILES["full"]
    runs = [r for r in plans.plan(full) if r["method"] == "distill"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and [plans.key(r) for r in runs][0] == "distill//seed0"
    assert plans.eval_eps(runs[0], full) == [0.01, 0.1]  # every budget, as the control
    assert all(r["method"] != "distill" for r in plans.plan(arms.PROFILES["quick"]))

    trained = []

    def fake_train(overrides):
        trained.append(overrides)
        weights = files / overrides["name"] / "weights" / "best.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.touch()
        return weights, 1.0

    def fake_evaluate(weights, data, eps, name):
        """Vanilla 50 benign, 10 attacked; distill 49 benign, 12 under FGSM, 11 under PGD; others 48 / 30."""
        benign, fgsm, pgd = (50.0, 10.0, 10.0) if "vanilla" in name else (49.0, 12.0, 11.0)
        if "advtrain" in name or "advamd" in name or "ablation" in name:
            benign, fgsm, pgd = 48.0, 30.0, 30.0
        return {"benign": benign, **{column_name(a, e): s for e in eps for a, s in (("fgsm", fgsm), ("pgd", pgd))}}

    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    monkeypatch.setattr(paths, "ROOT", files)
    monkeypatch.setitem(arms.PROFILES, "full", {**full, "ablations": False, "defenses": ("distill",)})
    (files / "targets").mkdir()
    (files / "targets" / "full.pt").touch()
    records.record(
        {
            "key": "target",
            "profile": "full",
            "weights": "targets/full.pt",
            "train_seconds": 1,
            "curve": [49.0, 50.0],
            "map": {"benign": 50.0, "fgsm eps=0.01": 5.0, "fgsm eps=0.1": 1.0},
        }
    )
    runner.run_protocol("full")
    distill = [o for o in trained if o["method"] == "distill"]
    assert [o["name"] for o in distill] == [f"distill__seed{s}" for s in (0, 1, 2)]
    for o in distill:  # what the trainer gets: no attack key, and settings distillation accepts
        assert not {"attack", "eps", "steps"} & set(o)
        resolve_advamd_cfg({k: v for k, v in o.items() if k not in {"model", "data", "project", "name"}})
        METHODS["distill"].check_start({**o, "model": "m.pt"})
    entry = next(e for e in records.load() if e["key"] == "distill//seed1")
    assert set(entry["map"]) >= {"benign", "fgsm eps=0.01", "fgsm eps=0.1", "pgd eps=0.01", "pgd eps=0.1"}
    text = report.report()
    heads = ("fgsm ε=0.01", "fgsm ε=0.1", "pgd-3 ε=0.01", "pgd-3 ε=0.1")
    assert "| defense | " + " | ".join(f"Δ adv, {h}" for h in heads) + " |" in text
    lines = text.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("| defense |")))
    rows = [line.split(" |")[0] for line in lines[first + 2 : lines.index("", first)]]
    assert rows == ["| None", "| Adv-Train", "| Def-Distill", "| AdvAmd"]  # the paper's order, AdvAmd beside
    row = next(line for line in text.splitlines() if line.startswith("| Def-Distill |"))
    # Δ adv vs the baseline, the control's benign 50: FGSM 12 - 50, PGD 11 - 50; Δ benign 49 - 50 in every column
    assert row == "| Def-Distill |" + " -38.00 ± 0.00 |" * 2 + " -39.00 ± 0.00 |" * 2 + " -1.00 ± 0.00 |" * 4
    assert "Def-Distill and MagNet train once per seed without an attack" in text
    assert "| distill | — | 1 | -1.00 | +2.00 | +2.00 | +1.00 | +1.00 | 0.0 |" in text  # every run, Δ per column
    assert (files / "plot.png").stat().st_size > 0


def test_magnet_row_defends_the_same_seed_control_and_reports_its_rejection_rates(files, monkeypatch):
    full = arms.PROFILES["full"]
    magnet = [r for r in plans.plan(full) if r["method"] == "magnet"]
    assert [plans.key(r) for r in magnet] == [f"magnet//seed{s}" for s in (0, 1, 2)]  # one autoencoder per seed
    assert plans.eval_eps(magnet[0], full) == [0.01, 0.1]  # scored at every budget, FGSM and PGD-3
    assert not any(r["method"] == "magnet" for r in plans.plan(arms.PROFILES["quick"]))
    trained, defended = [], []

    def fake_train(overrides):
        trained.append(overrides)
        weights = files / overrides["name"] / "weights" / "best.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.touch()
        (weights.parents[1] / "results.csv").write_text("epoch,time,metrics/mAP50-95(B)\n1,10,0.5\n2,20,0.6\n")
        return weights, 1.0

    def fake_defended(weights, defense, data, eps, name):
        defended.append((weights, defense))
        cols = ["benign", *(f"{a} eps={e:g}" for a in ("fgsm", "pgd") for e in eps)]
        return {c: 45.0 for c in cols}, {c: 0.5 if c == "benign" else 30.0 for c in cols}

    monkeypatch.setitem(arms.PROFILES, "tiny", {**full, "seeds": (0,), "ablations": False, "defenses": ("magnet",)})
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda w, d, eps, n: {"benign": 50.0, "fgsm eps=0.01": 20.0})
    monkeypatch.setattr(runner, "evaluate_defended", fake_defended)
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    monkeypatch.setattr(paths, "ROOT", files)
    runner.run_protocol("tiny")
    [ae] = [t for t in trained if t["method"] == "magnet"]
    assert (ae["optimizer"], ae["lr0"], ae["epochs"]) == ("Adam", 0.001, arms.MAGNET["epochs"])
    assert defended == [
        (files / "vanilla__seed0" / "weights" / "best.pt", files / "magnet__seed0" / "weights" / "best.pt")
    ]
    entry = next(e for e in records.load() if e["key"] == "magnet//seed0")
    assert entry["rejected"]["benign"] == 0.5 and entry["map"]["pgd eps=0.1"] == 45.0
    text = report.report()
    assert "| MagNet | -5.00 |" in text  # Δ adv at FGSM ε=0.01 vs the baseline, the control's benign (45 - 50)
    assert "MagNet rejected (benign val, then val attacked on the model): benign 0.50 %, fgsm ε=0.01 30.00 %" in text
    assert "MagNet trains its autoencoder on the same scenes" in text


def test_magnet_needs_its_control_on_disk_and_rerun_trains_the_control_again(files, monkeypatch):
    """MagNet defends the same-seed control: when that control's weights are gone the protocol stops and names
    `--rerun vanilla`, which trains the control again (its first scores kept) and then MagNet."""
    full = arms.PROFILES["full"]
    monkeypatch.setitem(arms.PROFILES, "tiny", {**full, "seeds": (0,), "ablations": False, "defenses": ("magnet",)})
    trained = []

    def fake_train(overrides):
        trained.append(overrides["name"])
        weights = files / overrides["name"] / "weights" / "best.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.touch()
        return weights, 1.0

    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "evaluate", lambda w, d, eps, n: {"benign": 50.0, "fgsm eps=0.01": 20.0})
    monkeypatch.setattr(runner, "evaluate_defended", lambda w, m, d, eps, n: ({"benign": 45.0}, {"benign": 1.0}))
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    monkeypatch.setattr(paths, "ROOT", files)
    (files / "targets").mkdir()
    (files / "targets" / "tiny.pt").touch()
    target = {"weights": "targets/tiny.pt", "train_seconds": 1, "curve": [49.0, 50.0], "map": {"benign": 50.0}}
    records.record({"key": "target", "profile": "tiny", **target})
    for run in plans.plan(arms.PROFILES["tiny"]):  # every run recorded but MagNet, the control's weights gone
        if run["method"] != "magnet":
            name = plans.method_name(run)
            records.record(
                {
                    "key": plans.key(run),
                    "profile": "tiny",
                    **run,
                    "name": name,
                    "weights": f"gone/{name}.pt",
                    "train_seconds": 1,
                    "map": {
                        "benign": 49.0,
                        "fgsm eps=0.01": 20.0,
                        "fgsm eps=0.1": 5.0,
                        "pgd eps=0.01": 9.0,
                        "pgd eps=0.1": 1.0,
                    },
                }
            )
    with pytest.raises(
        FileNotFoundError,
        match=r"MagNet defends the same-seed control, whose weights .* are gone: "
        r"add --rerun vanilla",
    ):
        runner.run_protocol("tiny")
    assert trained == []  # stopped before its autoencoder trained
    runner.run_protocol("tiny", rerun=("vanilla",))
    assert trained == ["vanilla__seed0_rerun", "magnet__seed0"]  # the control again, then MagNet
    by_key = {e["key"]: e for e in records.load() if e["profile"] == "tiny"}
    assert by_key["vanilla//seed0"]["rerun_of"]["map"]["benign"] == 49.0 and by_key["magnet//seed0"]["map"] == {
        "benign": 45.0
    }


def test_masking_scores_each_defense_run_on_attacks_made_on_its_same_seed_control(files, monkeypatch, capsys):
    """benchmarks/masking.py: Def-Distill's white-box scores beside the scores under attacks transferred from the
    control of its seed, and the control's own."""
    import masking

    seen = []

    def fake_evaluate(weights, data, eps, name, attack_model=None):
        seen.append((weights.name, attack_model.name, eps))
        return {"benign": 78.0, "fgsm eps=0.01": 31.0, "pgd eps=0.01": 12.0}

    monkeypatch.setattr(masking, "evaluate", fake_evaluate)
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    monkeypatch.setattr(paths, "ROOT", files)
    for name, scores in (("vanilla", (84.0, 40.0, 18.0)), ("distill", (78.0, 64.0, 60.0))):
        (files / f"{name}.pt").touch()
        records.record(
            {
                "key": f"{name}//seed0",
                "profile": "full",
                "name": name,
                "seed": 0,
                "weights": f"{name}.pt",
                "train_seconds": 1,
                "map": dict(zip(("benign", "fgsm eps=0.01", "pgd eps=0.01"), scores)),
            }
        )
    masking.main("distill", 0.01)
    assert seen == [("distill.pt", "vanilla.pt", [0.01])]  # attacks made on the same-seed control
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row == ["0", "78.00", "64.00", "31.00", "40.00", "60.00", "12.00", "18.00"]
    assert (files / "docs" / "results" / "masking_distill.txt").read_text().splitlines()[2].split() == row
    with pytest.raises(SystemExit, match="no run of method=udfa"):
        masking.main("udfa", 0.01)


def test_saturation_validates_a_checkpoint_with_its_class_logits_times_t(digits, tmp_path):
    """benchmarks/saturation.py: at T = 1 the plain validation's numbers; at T = 100 its scores saturated."""
    import saturation
    from ultralytics import YOLO

    lines = saturation.main(str(digits["stock"]), digits["data"], 64, [1, 100], project=str(tmp_path))
    plain = YOLO(str(digits["stock"])).val(
        data=digits["data"], imgsz=64, half=False, plots=False, project=str(tmp_path)
    )
    assert lines[1].startswith(f"T = 1: mAP50-95 {100 * plain.box.map:.2f}, mAP50 {100 * plain.box.map50:.2f}")
    assert lines[2].startswith("T = 100: mAP50-95 ") and len(lines) == 3
