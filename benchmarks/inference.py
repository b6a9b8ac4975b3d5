"""Inference cost after export: an amended model versus the stock architecture, and MagNet's defense versus the bare
model (onnxruntime latency).

The same weights are saved twice: as a stock Ultralytics checkpoint (never converted) and as an amended one (dual BN
with a different auxiliary BN and AdvAmd state attached, as our trainer writes it). The stock one is exported by
Ultralytics itself, the amended one by `yolo_advamd.export.export_model`; both ONNX files are then timed in the same
process, interleaved run by run so that machine load hits both alike. Expected: identical graphs and a latency ratio
of 1.00 within noise (the auxiliary BN is stripped before export).

MagNet (`defense=True`) adds its autoencoder before the model: the defended pipeline runs the exported autoencoder
(`export.export_defense`: reconstruction and error) and then the model on the reconstruction; it is timed against the
bare model in the same process, interleaved the same way, and reported as a ratio.

Usage:
    python benchmarks/inference.py                      # yolov8n at 160 and 320 px, 200 timed runs each
    python benchmarks/inference.py model=yolo11n.yaml imgsz=320 runs=500 threads=2
    python benchmarks/inference.py defense=True         # MagNet's autoencoder + the model versus the model alone
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import Counter
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd.cfg import parse_cli
from yolo_advamd.export import export_defense, export_model
from yolo_advamd.nn.autoencoder import Autoencoder
from yolo_advamd.nn.dual_bn import DualBatchNorm2d, convert_dual_bn

DEFAULTS = {"model": "yolov8n.yaml", "imgsz": "160,320", "runs": 200, "warmup": 20, "threads": 1, "defense": False}


def checkpoints(cfg: str, root: Path, imgsz: int) -> dict[str, Path]:
    """Save one randomly initialized model as a stock checkpoint and as an amended one; return their paths."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

    torch.manual_seed(0)
    model = DetectionModel(cfg, verbose=False).eval()
    amended = convert_dual_bn(deepcopy(model))
    with torch.no_grad():
        for m in amended.modules():
            if isinstance(m, DualBatchNorm2d):
                m.aux.weight.mul_(0.5)  # an auxiliary BN that differs from the main one, as after AdvAmd training
    amended.advamd_state = {"abar": torch.ones(len(model.names))}
    files = {}
    for name, m in (("stock", model), ("amended", amended)):
        ema = deepcopy(m).half()
        ema.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, "imgsz": imgsz})
        files[name] = root / f"{name}.pt"
        torch.save({"model": None, "ema": ema, "train_args": {"imgsz": imgsz}, "epoch": 0}, files[name])
    return files


def session(file: str, threads: int):
    """Return an onnxruntime CPU session for `file` with a fixed number of threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    return ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])


def time_interleaved(calls: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Time each call (name -> function of no argument) `runs` times, alternating between them (order flipped every
    run); latencies in ms."""
    names = list(calls)
    for _ in range(warmup):
        for k in names:
            calls[k]()
    times = {k: [] for k in names}
    for i in range(runs):
        for k in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            calls[k]()
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def runner(session, x: np.ndarray):
    """Return a function running `session` on `x`."""
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def benchmark(model: str, imgsz: int, runs: int, warmup: int, threads: int) -> dict:
    """Export the stock and the amended model at `imgsz`, check their graphs and time them; return the numbers."""
    import onnx
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        files = checkpoints(model, Path(tmp), imgsz)
        onnx_files = {
            "stock": YOLO(files["stock"]).export(format="onnx", imgsz=imgsz),  # Ultralytics alone
            "amended": export_model(files["amended"], format="onnx", imgsz=imgsz),  # our path
        }
        ops = {k: Counter(n.op_type for n in onnx.load(f).graph.node) for k, f in onnx_files.items()}
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        sessions = {k: session(f, threads) for k, f in onnx_files.items()}
        outputs = {k: s.run(None, {s.get_inputs()[0].name: x})[0] for k, s in sessions.items()}
        times = time_interleaved({k: runner(s, x) for k, s in sessions.items()}, runs, warmup)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": model,
        "imgsz": imgsz,
        "nodes": {k: sum(v.values()) for k, v in ops.items()},
        "same_graph": ops["stock"] == ops["amended"],
        "max_output_diff": float(np.abs(outputs["stock"] - outputs["amended"]).max()),
        "median_ms": median,
        "p90_ms": {k: float(np.percentile(v, 90)) for k, v in times.items()},
        "ratio": median["amended"] / median["stock"],
    }


def defense_benchmark(model: str, imgsz: int, runs: int, warmup: int, threads: int) -> dict:
    """Time the model alone and MagNet's autoencoder followed by the model on its reconstruction; return the numbers.

    The weights are random: the cost of a forward pass does not depend on them.
    """
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        files = checkpoints(model, Path(tmp), imgsz)
        autoencoder = Autoencoder().eval()
        autoencoder.threshold, autoencoder.fpr, autoencoder.imgsz, autoencoder.fit_for = 1.0, 0.005, imgsz, model
        sessions = {
            "model": session(YOLO(files["stock"]).export(format="onnx", imgsz=imgsz), threads),
            "autoencoder": session(str(export_defense(autoencoder, Path(tmp) / "magnet.onnx")), threads),
        }
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        bare, screen = runner(sessions["model"], x), sessions["autoencoder"]

        def defended():  # an accepted image, the costlier case: the model runs on its reconstruction
            reconstruction, _ = screen.run(None, {"images": x})
            sessions["model"].run(None, {sessions["model"].get_inputs()[0].name: reconstruction})

        times = time_interleaved({"model": bare, "defended": defended}, runs, warmup)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "imgsz": imgsz, "median_ms": median, "ratio": median["defended"] / median["model"]}


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark for every image size and print one line per size."""
    args = {**DEFAULTS, **parse_cli(argv)}
    sizes = [int(s) for s in str(args["imgsz"]).split(",")]
    if args["defense"]:
        rows = [
            defense_benchmark(args["model"], s, *(int(args[k]) for k in ("runs", "warmup", "threads"))) for s in sizes
        ]
        print(
            f"\nMagNet: onnxruntime CPU latency, {args['runs']} interleaved runs, {args['threads']} thread(s), batch 1"
        )
        print(f"{'model':14s} {'imgsz':>5s} {'model ms':>9s} {'+MagNet ms':>10s} {'ratio':>6s}")
        for r in rows:
            m = r["median_ms"]
            print(f"{r['model']:14s} {r['imgsz']:5d} {m['model']:9.2f} {m['defended']:10.2f} {r['ratio']:6.3f}")
        return rows
    rows = [benchmark(args["model"], s, int(args["runs"]), int(args["warmup"]), int(args["threads"])) for s in sizes]
    print(f"\nonnxruntime CPU latency, {args['runs']} interleaved runs, {args['threads']} thread(s), batch 1")
    header = ("model", "imgsz", "nodes", "stock ms", "amended ms", "ratio")
    print("{:14s} {:>5s} {:>11s} {:>9s} {:>10s} {:>6s}  same graph, outputs".format(*header))
    for r in rows:
        print(
            f"{r['model']:14s} {r['imgsz']:5d} {r['nodes']['stock']:5d}/{r['nodes']['amended']:<5d} "
            f"{r['median_ms']['stock']:9.2f} {r['median_ms']['amended']:10.2f} {r['ratio']:6.3f}  "
            f"{r['same_graph']}, max |diff| {r['max_output_diff']:.1e}"
        )
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
