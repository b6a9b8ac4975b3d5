"""Export: stock checkpoints without AdvAmd, weights-only files, safe loading, ONNX equal to PyTorch, clear failures."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import IMGSZ, WITHOUT_ADVAMD, digits_detector, val_batch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import (
    DEFAULT_CFG_KEYS,
)

from yolo_advamd.export import export_model, load_state_dict_file, pickled_globals
from yolo_advamd.nn.dual_bn import aux_bn, has_dual_bn

TESTS = Path(__file__).parent
STOCK_CKPT_KEYS = {
    "date",
    "version",
    "license",
    "docs",
    "epoch",
    "best_fitness",
    "stopper",
    "model",
    "ema",
    "updates",
    "modelopt",
    "optimizer",
    "scaler",
    "train_args",
    "train_metrics",
    "train_results",
    "git",
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, digits):
    """Stock and amended checkpoints of the digits detector, in a directory of this module's own."""
    root = tmp_path_factory.mktemp("export")
    files = {k: Path(shutil.copy(digits[k], root)) for k in ("stock", "amended")}
    return {**files, "base": digits_detector(tmp_path_factory.getbasetemp()), "data": digits["data"], "root": root}


@pytest.fixture(scope="module")
def onnx_files(ckpts):
    """ONNX exports of the amended checkpoint (export_model) and of the never-converted one (Ultralytics alone)."""
    from ultralytics import YOLO

    return {
        "amended": export_model(ckpts["amended"], format="onnx", imgsz=IMGSZ),
        "stock": YOLO(ckpts["stock"]).export(format="onnx", imgsz=IMGSZ),
    }


@pytest.fixture(scope="module")
def stock_pt(ckpts):
    """The amended checkpoint exported as a stock Ultralytics checkpoint."""
    return export_model(ckpts["amended"], format="pt")


def test_stock_checkpoint_has_main_bn_weights_and_no_advamd_state(ckpts, stock_pt):
    """format=pt: plain BatchNorm holding the main BN bit for bit, Ultralytics keys only, fp16, not resumable."""
    ckpt = torch.load(stock_pt, map_location="cpu", weights_only=False)
    model = ckpt["model"]
    assert set(ckpt) <= STOCK_CKPT_KEYS and "advamd" not in ckpt
    assert ckpt["ema"] is None and ckpt["optimizer"] is None and ckpt["epoch"] == -1
    assert not has_dual_bn(model) and not hasattr(model, "advamd_state") and model.criterion is None
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in model.parameters())
    assert set(ckpt["train_args"]) <= set(DEFAULT_CFG_KEYS) and "attack" not in ckpt["train_args"]
    assert set(model.args) <= set(DEFAULT_CFG_KEYS)
    expected = deepcopy(ckpts["base"]).half().state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert not any(g.startswith("yolo_advamd") for g in pickled_globals(stock_pt))
    assert any(g.startswith("yolo_advamd") for g in pickled_globals(ckpts["amended"]))  # the check can fail


BLOCKED_RUN = WITHOUT_ADVAMD + textwrap.dedent(
    """
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    model = YOLO(sys.argv[2])
    boxes = model.predict(ASSETS / "bus.jpg", imgsz=64, conf=0.0, verbose=False)[0].boxes
    metrics = model.val(data=sys.argv[3], imgsz=64, batch=16, workers=0, plots=False, verbose=False)
    onnx = model.export(format="onnx", imgsz=64)
    print(json.dumps({"boxes": len(boxes), "map50": metrics.box.map50, "onnx": onnx,
                      "advamd": any(m.startswith("yolo_advamd") for m in sys.modules)}))
    """
)


@pytest.mark.slow
def test_stock_checkpoint_predicts_validates_and_exports_without_yolo_advamd(ckpts, stock_pt, tmp_path):
    """A fresh process in which yolo_advamd cannot be imported loads the stock checkpoint with YOLO and uses it."""
    env = {**os.environ, "OFFLINE_GUARD_LOG": str(tmp_path / "network.log")}
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, str(TESTS), stock_pt, str(ckpts["data"])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["boxes"] > 0 and result["map50"] > 0.5 and not result["advamd"]  # the digits detector works
    assert Path(result["onnx"]).is_file()
    assert not (tmp_path / "network.log").exists()


SAFE_LOAD_RUN = textwrap.dedent(
    """
    import json, sys
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load
    from ultralytics.utils import SAFE_LOAD

    try:
        YOLO(sys.argv[1])
        refused = ""
    except TypeError as e:
        refused = str(e)
    import yolo_advamd.nn  # registers the dual BN classes as safe globals

    model = YOLO(sys.argv[1]).model
    ckpt, _ = torch_safe_load(sys.argv[1])
    print(json.dumps({"safe": SAFE_LOAD, "refused": refused, "dual": type(model.model[0].bn).__name__,
                      "keys": sorted(ckpt), "abar": len(ckpt["advamd"]["abar"])}))
    """
)


def test_amended_resume_checkpoint_loads_under_ultralytics_safe_load(ckpts):
    """ULTRALYTICS_SAFE_LOAD=1 refuses our classes until yolo_advamd.nn is imported, then loads everything."""
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SAFE_LOAD_RUN, str(ckpts["amended"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["safe"] is True and "outside the supported" in result["refused"]
    assert result["dual"] == "DualBatchNorm2d" and "optimizer" in result["keys"] and result["abar"] == 10


def test_weights_only_file_loads_with_torch_weights_only_and_rebuilds_the_model(ckpts, capsys):
    """format=state_dict: tensors and builtins only; the rebuilt model gives the stock model's outputs."""
    file = export_model(ckpts["amended"], format="state_dict")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    assert not any(k.endswith(".aux.weight") for k in ckpt["state_dict"]) and ckpt["nc"] == 10
    model = load_state_dict_file(file)
    reference = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    reference.load_state_dict(deepcopy(ckpts["base"]).half().float().state_dict())
    x = val_batch(ckpts["data"])["img"]
    with torch.no_grad():
        assert torch.equal(model(x)[0], reference.eval()(x)[0])
    from yolo_advamd.cli import main_train

    assert main_train([f"model={file}", "epochs=1"]) == 2  # training from it: one line naming the file, no traceback
    assert f"{file} holds no model (a weights-only file" in capsys.readouterr().err


def onnx_outputs(file, x):
    """Run an ONNX file in onnxruntime on each image of `x` (the export has batch 1) and stack the outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(file, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])


def test_onnx_export_matches_pytorch_main_bn_on_real_images(ckpts, onnx_files):
    """onnxruntime on the amended export equals the PyTorch model (main BN) on real digit scenes.

    Boxes agree within 1e-3 px and class scores within 1e-5 (the export fuses Conv and BN, PyTorch does not).
    """
    from ultralytics import YOLO

    model = YOLO(ckpts["amended"]).model.float().eval()
    assert has_dual_bn(model)  # the PyTorch reference is the amended model itself, routed to its main BN
    x = val_batch(ckpts["data"])["img"]
    with torch.no_grad():
        expected = model(x)[0].numpy()
    got = onnx_outputs(onnx_files["amended"], x)
    assert got.shape == expected.shape
    assert np.abs(got[:, :4] - expected[:, :4]).max() < 1e-3
    assert np.abs(got[:, 4:] - expected[:, 4:]).max() < 1e-5
    with torch.no_grad(), aux_bn(model):
        assert not np.isfinite(model(x)[0].numpy()).any()  # its (poisoned) auxiliary BN was not what got exported


def test_torchscript_export_matches_pytorch_main_bn(ckpts):
    from ultralytics import YOLO

    model = YOLO(ckpts["amended"]).model.float().eval()
    x = val_batch(ckpts["data"])["img"][:1]  # the export has batch 1
    scripted = torch.jit.load(export_model(ckpts["amended"], format="torchscript", imgsz=IMGSZ))
    with torch.no_grad():
        expected, got = model(x)[0], scripted(x)  # (1, 4 + nc, anchors) both
    assert got.shape == expected.shape
    assert (got[:, :4] - expected[:, :4]).abs().max() < 1e-3 and (got[:, 4:] - expected[:, 4:]).abs().max() < 1e-5


def test_onnx_graph_is_identical_in_size_to_the_stock_architecture(onnx_files):
    """Zero inference overhead: same operators, node count, inputs and outputs as the never-converted model."""
    import onnx

    graphs = {k: onnx.load(f).graph for k, f in onnx_files.items()}
    ops = {k: Counter(n.op_type for n in g.node) for k, g in graphs.items()}
    assert ops["amended"] == ops["stock"] and sum(ops["amended"].values()) > 100
    shapes = {k: [str(v.type) for v in (*g.input, *g.output)] for k, g in graphs.items()}
    assert shapes["amended"] == shapes["stock"]
    params = {k: sum(int(np.prod(t.dims)) for t in g.initializer) for k, g in graphs.items()}
    assert params["amended"] == params["stock"]


def test_tensorrt_export_without_gpu_fails_with_ultralytics_message_and_installs_nothing(ckpts, monkeypatch):
    """format=engine goes through Ultralytics' exporter: without a GPU its CUDA error surfaces; no pip, no network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted to run or connect: {args}")

    monkeypatch.setattr(subprocess, "check_output", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU-only failure cannot be shown")
    with pytest.raises(ValueError, match="Invalid CUDA 'device=0' requested"):
        export_model(ckpts["amended"], format="engine", imgsz=64)


def test_export_format_with_a_missing_package_names_it_and_installs_nothing(ckpts, monkeypatch):
    """A format whose package is missing (OpenVINO here) fails with the package name and the fix, nothing installed."""
    if importlib.util.find_spec("openvino") is not None:
        pytest.skip("openvino is installed")
    monkeypatch.setattr(subprocess, "check_output", lambda *a, **k: pytest.fail(f"pip was run: {a}"))
    with pytest.raises(ModuleNotFoundError, match=r"format=openvino needs the Python package 'openvino'.*pip install"):
        export_model(ckpts["amended"], format="openvino", imgsz=64)


def test_bad_model_path_and_options_are_refused_with_the_fix(ckpts, tmp_path):
    """A missing checkpoint or export options for format=pt fail before any work, saying what to pass."""
    with pytest.raises(FileNotFoundError, match="missing.pt is not on disk and yolo-advamd never downloads weights"):
        export_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="model=best.onnx is not a .pt checkpoint on disk"):
        export_model("best.onnx")
    with pytest.raises(ValueError, match="takes no export options"):
        export_model(ckpts["amended"], format="pt", imgsz=64)
