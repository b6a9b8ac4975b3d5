"""benchmarks/reproduce.py: resumable (recorded runs are never trained again) and its report computes Δ vs the control."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Point the script's results, report and plot at a temporary directory."""
    monkeypatch.setattr(reproduce, "RESULTS", tmp_path / "results.jsonl")
    monkeypatch.setattr(reproduce, "REPORT", tmp_path / "RESULTS.md")
    monkeypatch.setattr(reproduce, "PLOT", tmp_path / "plot.png")
    monkeypatch.setattr(reproduce, "BENCH", tmp_path / "benchmarks.txt")
    return tmp_path


def test_protocol_resumes_and_skips_recorded_runs(files, monkeypatch):
    trained = []

    def fake_train(overrides):
        trained.append(overrides["name"])
        assert "vary" not in overrides and overrides.get("beta3", 0.5) == 0.5
        (files / f"{overrides['name']}.pt").touch()
        return files / f"{overrides['name']}.pt", 1.0

    monkeypatch.setattr(reproduce, "train", fake_train)
    monkeypatch.setattr(reproduce, "evaluate", lambda w, d, p, n: {"benign": 50.0, "fgsm eps=0.01": 20.0})
    monkeypatch.setattr("yolo_advamd.data.resolve_dataset", lambda d: d)
    reproduce.record({"key": "vanilla//seed0", "profile": "quick", "name": "vanilla", "seed": 0, "method": "vanilla",
                      "attack": "fgsm", "eps": 0.01, "train_seconds": 1, "map": {"benign": 50.0}})  # fmt: skip
    reproduce.run_protocol("quick")
    assert trained == ["target", "advtrain_fgsm-0.01_seed0", "advamd_fgsm-0.01_seed0"]  # vanilla was recorded
    trained.clear()
    reproduce.run_protocol("quick")  # everything recorded: nothing is trained again
    assert trained == []
    assert len(reproduce.load()) == 4
    reproduce.run_protocol("quick", vary={"beta3": 0.5})  # a tried setting: (c) only, a row of its own
    assert trained == ["advamd_fgsm-0.01_seed0_beta3=0.5"]
    assert "| quick | advamd | fgsm ε=0.01 beta3=0.5 | 0 | +0.00 |  |" in reproduce.report()
    trained.clear()
    reproduce.run_protocol("quick", seeds=[0, 1])  # more seeds: only the new seed's (a), (b), (c) are trained
    assert trained == ["vanilla__seed1", "advtrain_fgsm-0.01_seed1", "advamd_fgsm-0.01_seed1"]
    (files / "target.pt").unlink()  # the weights every recorded fine-tune started from are gone: say so, train nothing
    with pytest.raises(FileNotFoundError, match="recorded M_T of profile 'quick'"):
        reproduce.run_protocol("quick", seeds=[0, 1, 2])


def test_report_deltas_are_against_the_same_seed_control(files):
    base = {"profile": "quick", "attack": "fgsm", "eps": 0.01, "train_seconds": 60}
    for seed, (van, amd) in enumerate([(50.0, 52.0), (48.0, 51.0)]):
        reproduce.record({**base, "key": f"v{seed}", "name": "vanilla", "seed": seed, "map": {"benign": van, "fgsm eps=0.01": 10.0}})
        reproduce.record({**base, "key": f"a{seed}", "name": "advamd", "seed": seed, "map": {"benign": amd, "fgsm eps=0.01": 15.0}})
    reproduce.BENCH.write_text("fgsm  1318 ms  3.79x stock")  # the last --bench tables stay in every report
    text = reproduce.report()
    assert "## Step cost and attack speed" in text and "3.79x stock" in text
    rows = [line for line in text.splitlines() if line.startswith("| quick | advamd")]
    assert "| +2.00 | +5.00 |" in rows[0] and "| +3.00 | +5.00 |" in rows[1]
    assert "51.50 ± 0.71" in text  # mean ± stdev over the two seeds
    assert "quick, advamd (fgsm ε=0.01): beats the control on benign val, Δ = +2.50 ± 0.71 over 2 seeds." in text
    assert (files / "plot.png").stat().st_size > 0
    assert json.loads(reproduce.RESULTS.read_text().splitlines()[0])["key"] == "v0"
