"""Settings, `key=value` parsing and command-line errors: every bad input fails before any work, naming the fix."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yolo_advamd.cfg import merge_cfg, parse_cli, resolve_advamd_cfg

ROOT = Path(__file__).resolve().parents[1]


def settings(**kw):
    """AdvAmd defaults with `kw` applied, validated."""
    return resolve_advamd_cfg(kw)


def test_parse_cli_reads_key_value_like_yolo():
    args = parse_cli(["model=yolov8n.yaml", "eps=0.1", "mediate=False", "name=3", "attack", "=", "pgd"])
    assert args == {"model": "yolov8n.yaml", "eps": 0.1, "mediate": False, "name": "3", "attack": "pgd"}
    assert parse_cli(["help"]) == {"help": True}
    with pytest.raises(SyntaxError, match="not a key=value"):
        parse_cli(["epochs", "10"])


def test_unknown_key_is_rejected_with_suggestion():
    with pytest.raises(SyntaxError, match=r"'epsilon' is not a valid argument\. Did you mean eps=0\.01"):
        merge_cfg({"epsilon": 0.1})
    with pytest.raises(SyntaxError, match="lr0"):
        merge_cfg({"lr": 0.1})
    with pytest.raises(SyntaxError, match=r"Valid keys: method, hyp, attack, eps, .*, and every Ultralytics setting"):
        merge_cfg({"bogus": 1})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"eps": 2.0}, r"eps=2\.0 is outside \(0, 1\]"),
        ({"eps": 0}, r"eps=0 is outside \(0, 1\]"),
        ({"phi": 1.0}, r"phi=1\.0 is outside \(0, 1\)"),
        ({"steps": 0}, r"steps=0 must be a whole number >= 1"),
        ({"beta2": -1.0}, r"beta2=-1\.0 must be a number >= 0"),
        ({"attack": "cw"}, r"attack=cw is not an attack: choose one of fgsm, pgd, deepfool"),
        ({"method": "trades"}, r"method=trades is not valid"),
        ({"abar_batches": 0}, r"abar_batches=0 must be a whole number >= 1"),
        ({"norm": 1}, r"norm=1 is not valid"),
        ({"step_size": -0.1}, r"step_size=-0\.1 must be > 0"),
        ({"attack": "fgsm", "steps": 3}, r"steps=3 does not fit attack=fgsm"),
        ({"attack": "deepfool", "random_start": True}, r"DeepFool starts at the clean images"),
        ({"attack": "deepfool", "deepfool": "slow"}, r"deepfool=slow is not valid: choose fast .* or exact"),
        ({"attack": "pgd", "deepfool": "exact"}, r"deepfool=exact chooses DeepFool's variant: attack=pgd has none"),
    ],
)
def test_bad_setting_names_key_value_and_range(bad, message):
    with pytest.raises(ValueError, match=message):
        settings(**bad)


def test_per_attack_defaults_follow_the_paper():
    assert settings(attack="fgsm")["phi"] == 0.7
    assert settings(attack="deepfool")["phi"] == 0.6
    assert settings(attack="deepfool")["deepfool"] == "exact" and settings(attack="fgsm")["deepfool"] is None
    pgd = settings(attack="pgd")
    assert (pgd["phi"], pgd["steps"], pgd["random_start"]) == (0.5, 10, True)
    assert settings(attack="pgd", phi=0.3)["phi"] == 0.3


def test_each_method_starts_from_its_published_settings():
    s = settings(method="advtrain")
    assert not (s["mediate"] or s["aux_bn"] or s["advamd_loss"])  # the paper's Adv-Train: every amendment off
    with pytest.raises(ValueError, match="mediate=True does not fit method=advtrain"):
        settings(method="advtrain", mediate=True)
    assert (settings(method="detadvprop")["eps"], settings(method="udfa")["eps"]) == (1 / 255, 2 / 255)
    assert settings(method="udfa", eps="8/255")["eps"] == 8 / 255  # a default, not a fixed setting


def test_hyp_file_expands_under_explicit_overrides(tmp_path):
    for f in sorted((ROOT / "hyps").glob("*.yaml")):  # every shipped hyp file is valid
        settings(hyp=str(f))
    hyp = tmp_path / "h.yaml"
    hyp.write_text("attack: pgd\neps: 0.1\nlr0: 0.002\n")
    s = settings(hyp=str(hyp), eps=0.05)
    assert (s["attack"], s["eps"], s["lr0"]) == ("pgd", 0.05, 0.002)
    hyp.write_text("epz: 0.1\n")
    with pytest.raises(SyntaxError, match=r"'epz' is not a valid key in hyp="):
        merge_cfg({"hyp": str(hyp)})
    with pytest.raises(FileNotFoundError, match="hyp=missing.yaml does not exist"):
        merge_cfg({"hyp": "missing.yaml"})


def cli(*args, cwd):
    """Run train_advamd.py with `args` in `cwd`."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train_advamd.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_help_lists_every_method_and_the_advamd_keys_with_their_meaning(tmp_path):
    r = cli("help", cwd=tmp_path)
    assert r.returncode == 0
    for key in ("eps=0.01", "attack=fgsm", "abar_batches=20", "mediate=True", "abar_scope=positive"):
        assert key in r.stdout
    assert "# positive: A-bar weights the BCE of each foreground anchor's assigned class only" in r.stdout
    for method in ("advamd", "advtrain", "detadvprop", "udfa", "vanilla"):
        assert re.search(rf"^  {method} +\S", r.stdout, re.M), method
    assert "hyps/detadvprop.yaml" in r.stdout and "hyps/udfa.yaml" in r.stdout


@pytest.mark.parametrize("program", ["val_advamd.py", "attack.py", "export.py"])
def test_val_attack_and_export_help_give_every_key_its_meaning(program, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / program), "help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0
    keys = r.stdout.split("keys (key=value, defaults shown):\n")[1].split("\n\n")[0].splitlines()
    assert len(keys) >= 2
    for line in keys:
        key, _, note = line.strip().partition(" # ")
        assert "=" in key and len(note) > 10, line
    assert any(line.strip().startswith("model=") and "checkpoint" in line for line in keys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["epsilon=0.1"], "'epsilon' is not a valid argument. Did you mean eps=0.01?"),
        (["eps=3"], "eps=3 is outside (0, 1]"),
        (["model=yolov8n.pt"], "model=yolov8n.pt is not on disk"),
    ],
)
def test_cli_bad_input_fails_fast_and_writes_nothing(tmp_path, args, message):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^make (\w+)$", ci, flags=re.M)
    assert commands == ["test"]
    assert re.search(r"^make test$", readme, flags=re.M) and re.search(r"^make demo$", readme, flags=re.M)
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)[1].split("\n")
    assert [line.strip() for line in recipe if line] == [
        "$(BIN)/ruff check .",
        "$(BIN)/ruff format --check .",
        "$(BIN)/python -m pytest -q",
    ]  # lint, format, then the tests


@pytest.mark.parametrize(
    "program, args, message",
    [
        ("val_advamd.py", ["model=best.pt", "epz=3"], "'epz' is not a valid argument. Did you mean eps=0.01,0.1?"),
        ("val_advamd.py", ["model=missing.pt"], "model=missing.pt is not on disk"),
        ("val_advamd.py", ["data=data/coco.yaml"], "model= is required"),
        ("export.py", ["model=missing.pt", "format=onnx"], "model=missing.pt is not on disk"),
        (
            "export.py",
            ["model=missing.pt", "opset=12", "bogus=1"],
            "'bogus' is not a valid argument.\nValid keys: model",
        ),
    ],
)
def test_val_and_export_cli_errors(tmp_path, program, args, message):
    r = subprocess.run([sys.executable, str(ROOT / program), *args], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_trains_a_baseline_fine_tunes_it_and_prints_the_benign_and_fgsm_table(
    tmp_path, tiny_data, capsys, monkeypatch
):
    """`make demo` (no arguments) at a tiny size: baseline, AdvAmd fine-tune, then the val table of both with Δ."""
    from yolo_advamd import cli

    shared = {
        **cli.DEMO["shared"],
        "data": tiny_data,
        "imgsz": 64,
        "batch": 8,
        "fraction": 1.0,
        "close_mosaic": 0,
        "project": str(tmp_path),
        "workers": 0,
        "plots": False,
    }
    monkeypatch.setattr(
        cli,
        "DEMO",
        {
            **cli.DEMO,
            "shared": shared,
            "baseline": {**cli.DEMO["baseline"], "epochs": 1},
            "advamd": {**cli.DEMO["advamd"], "abar_batches": 1},
        },
    )
    monkeypatch.setenv("YOLO_ADVAMD_THREADS", str(torch.get_num_threads()))
    assert cli.main_train([]) == 0
    out = capsys.readouterr().out
    assert "| model | attacked model | benign | fgsm eps=0.01 |" in out
    assert re.search(r"^\| Δ \(.*advamd.* − .*baseline.*\) \|  \| [+-]\d+\.\d\d \| [+-]\d+\.\d\d \|$", out, flags=re.M)
    assert (tmp_path / "val" / "results.md").is_file()
