"""The structure the next methods are added to: no module outside `yolo_advamd/methods/` knows a method by its name,
and one command opens its checkpoint once."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_advamd.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "yolo_advamd"
COUNT_OPENS = """
import json, pathlib, runpy, sys, torch
opened, load = [], torch.load  # before Ultralytics keeps its own reference to torch.load

def counted(f, *args, **kwargs):
    opened.append(str(pathlib.Path(f).resolve()) if isinstance(f, (str, pathlib.Path)) else repr(f))
    return load(f, *args, **kwargs)

torch.load = counted
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("OPENED " + json.dumps(opened), file=sys.stderr)
"""


def name_comparisons(source: str) -> list[int]:
    """Lines of `source` that compare a method by name: a comparison with a method's name, or with a `method`
    setting (`args.method == ...`, `cfg["method"] in ...`)."""
    names = set(METHODS)

    def is_name(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
            return any(is_name(e) for e in node.elts)
        if isinstance(node, ast.Attribute):
            return node.attr == "method"
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Constant) and node.slice.value == "method"
        if isinstance(node, ast.Call):  # cfg.get("method")
            return any(isinstance(a, ast.Constant) and a.value == "method" for a in node.args)
        return isinstance(node, ast.Name) and node.id == "method"

    return [
        n.lineno
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Compare) and any(is_name(x) for x in (n.left, *n.comparators))
    ]


def test_the_check_finds_a_comparison_of_a_method_name():
    for line in (
        'if args.method == "udfa": pass',
        'x = cfg["method"] != "vanilla"',
        'y = m in {"detadvprop", "udfa"}',
        'z = self.args.method in ("advamd",)',
        'w = d.get("method") == name',
    ):
        assert name_comparisons(line) == [1], line
    assert name_comparisons('settings = {"method": "vanilla"}\nif self.method.amends: pass') == []


def test_no_module_outside_methods_compares_a_method_name():
    found = {
        str(f.relative_to(ROOT)): lines
        for f in sorted(PACKAGE.rglob("*.py"))
        if "methods" not in f.relative_to(PACKAGE).parts and (lines := name_comparisons(f.read_text()))
    }
    assert found == {}, f"ask the method object (yolo_advamd.methods) instead: {found}"


def opens(program: str, *args, cwd: Path) -> list[str]:
    """Run a CLI as a user does and return every file it opened with torch.load, in order."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    r = subprocess.run(
        [sys.executable, "-c", COUNT_OPENS, str(ROOT / program), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stderr.rsplit("OPENED ", 1)[1])


@pytest.mark.slow
def test_each_command_opens_its_checkpoint_once(tmp_path, digits, tiny_data):
    """train_advamd.py from a checkpoint, val_advamd.py and export.py each open the checkpoint they are given once
    (the trainer builds its model from the settings' copy; validation and export take the task from the model)."""
    ckpt = str(Path(digits["stock"]).resolve())
    train = opens(
        "train_advamd.py",
        f"model={ckpt}",
        f"data={tiny_data}",
        "imgsz=64",
        "epochs=1",
        "batch=8",
        "abar_batches=1",
        "fraction=0.25",
        "val=False",
        "plots=False",
        f"project={tmp_path}",
        "name=run",
        cwd=tmp_path,
    )
    assert train.count(ckpt) == 1
    val = opens(
        "val_advamd.py",
        f"model={ckpt}",
        f"data={tiny_data}",
        "imgsz=64",
        "attacks=fgsm",
        "eps=0.01",
        f"project={tmp_path}",
        "name=val",
        cwd=tmp_path,
    )
    assert val.count(ckpt) == 1
    export = opens("export.py", f"model={ckpt}", "format=onnx", "imgsz=64", cwd=tmp_path)
    assert export.count(ckpt) == 1
