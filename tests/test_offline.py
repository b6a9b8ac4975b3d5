"""Offline by construction: training, validation and export through our CLIs try no network, and plots get a font."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_guarded(args, tmp_path, home, program="train_advamd.py"):
    """Run `program` under the offline guard with a fresh Ultralytics config dir; return (result, attempts)."""
    log = tmp_path / f"attempts-{program}.log"
    env = {
        **os.environ,
        "OFFLINE_GUARD_LOG": str(log),
        "YOLO_CONFIG_DIR": str(home),  # no font or settings file there yet: a stock run would download Arial.ttf
        "YOLO_ADVAMD_DATA": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT / "tests"),
    }
    for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "NO_ALBUMENTATIONS_UPDATE"):
        env.pop(k, None)  # the package itself must set them
    code = (
        "import sys, runpy, offline_guard; "
        f"sys.argv = [{program!r}, *{args!r}]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r, log.read_text().splitlines() if log.exists() else []


def test_guard_catches_a_stock_ultralytics_import(tmp_path):
    """The guard works: stock Ultralytics, imported without our package, looks up DNS names at import."""
    env = {**os.environ, "OFFLINE_GUARD_LOG": str(tmp_path / "log"), "PYTHONPATH": str(ROOT / "tests")}
    env.pop("YOLO_OFFLINE", None)
    subprocess.run([sys.executable, "-c", "import offline_guard, ultralytics.utils"], env=env, timeout=120)
    assert "getaddrinfo" in (tmp_path / "log").read_text()


@pytest.mark.slow
def test_training_validation_and_export_through_cli_make_no_network_attempt(tmp_path):
    data = tmp_path / "tiny-digits.yaml"
    data.write_text("builder: digits-det\nseed: 1\nn_train: 32\nn_val: 16\nimgsz: 64\n")
    args = [
        "model=yolov8n.yaml",
        f"data={data}",
        "epochs=1",
        "imgsz=64",
        "batch=8",
        "abar_batches=1",
        "plots=True",
        f"project={tmp_path / 'runs'}",
        "name=offline",
    ]
    r, attempts = run_guarded(args, tmp_path, tmp_path / "ultralytics-home")
    assert r.returncode == 0, r.stderr[-3000:]
    assert attempts == [], f"network attempts: {attempts}"
    run = tmp_path / "runs" / "offline"
    assert (run / "weights" / "last.pt").is_file()
    assert (run / "results.csv").is_file()
    assert (tmp_path / "ultralytics-home" / "Ultralytics" / "Arial.ttf").is_file()  # plots had a local font
    weights = run / "weights" / "last.pt"
    for program, more in (
        ("val_advamd.py", [f"data={data}", "attacks=fgsm", "eps=0.03", "imgsz=64", "plots=True", f"project={run}"]),
        ("export.py", ["format=onnx", "imgsz=64"]),
    ):
        r, attempts = run_guarded([f"model={weights}", *more], tmp_path, tmp_path / "ultralytics-home", program)
        assert r.returncode == 0, r.stderr[-3000:]
        assert attempts == [], f"{program}: network attempts: {attempts}"
    assert (run / "weights" / "last.onnx").is_file()
