"""Cost of the corruption benchmark (`val_advamd.py corruptions=`) against stock Ultralytics validation, one process.

1. Per corruption, at each image size (digits-det scenes built at that size): the mean time to corrupt one image over
   severities 1-5 (`corrupt_image`, the package's function with our seeding; one process), and its ratio to the time
   per image of one stock Ultralytics `DetectionValidator` pass over the same images (dataloader, inference, NMS,
   metrics) with the same model.
2. What `elastic_transform` does to boxes: how far it moves pixels, per severity, at each size (a ramp image whose
   pixel values are their own coordinates, read back after the transform).
3. With `--wall`: the wall time of the full corruption benchmark on digits-det val (500 scenes, 160 px; 15 corruptions
   × 5 severities = 75 sets) against one clean validation, both through `validate_advamd`: building the 75 sets
   (cold cache, a temporary one, over every core) and validating them (warm cache).

Examples:
    $ python benchmarks/corruption_speed.py --sizes 160 640 --images 4
    $ python benchmarks/corruption_speed.py --wall --corruptions common --severities 1,2,3,4,5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from ultralytics.models.yolo.detect import DetectionValidator

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd.checkpoint import load_model
from yolo_advamd.cli import use_all_cores
from yolo_advamd.corruptions import (
    SEVERITIES,
    corrupt_image,
    corrupted_sets,
    corruption_names,
    corruption_split,
    parse_corruptions,
    parse_severities,
)
from yolo_advamd.data import build_digits_det, resolve_dataset
from yolo_advamd.validate import validate_advamd

MODEL = "docs/results/targets/full.pt"  # the study's M_T: yolov8n trained on digits-det at 160 px
WRAP_MARGIN = 32  # px: well beyond the largest move measured without wraps (at 160 px)


def stock_seconds_per_image(model, data: Path, imgsz: int) -> float:
    """Return the wall time per image of one stock Ultralytics validation of `data`'s val split (after a warm-up)."""
    args = {"data": str(data), "imgsz": imgsz, "batch": 16, "plots": False, "verbose": False}
    DetectionValidator(args=args)(model=model)  # warm-up: dataset cache, first-call costs
    t = time.perf_counter()
    DetectionValidator(args=args)(model=model)
    n = len(list((data.parent / "images" / "val").glob("*.png")))
    return (time.perf_counter() - t) / n


def corruption_costs(sizes: list[int], n_images: int, n_stock: int, model, root: Path) -> None:
    """Print the cost per image of each corruption at each size, and its ratio to stock validation per image."""
    names = corruption_names("all")
    results = {}
    for size in sizes:
        data = build_digits_det(root=root, seed=0, n_train=1, n_val=max(n_images, n_stock), imgsz=size)
        files = sorted((data / "images" / "val").glob("*.png"))[:n_images]
        images = [np.ascontiguousarray(cv2.imread(str(f))[..., ::-1]) for f in files]
        corrupt_image(images[0], "glass_blur", 1)  # numba compiles glass blur on its first call
        stock = stock_seconds_per_image(model, data / "digits-det.yaml", size)
        for name in names:
            t = time.perf_counter()
            for image in images:
                for s in SEVERITIES:
                    corrupt_image(image, name, s)
            results[name, size] = (time.perf_counter() - t) / (len(images) * len(SEVERITIES))
        results["stock", size] = stock
    print(
        f"\nCost per image of each corruption (mean over severities 1-5, {n_images} digits-det scenes, one process), "
        f"ms, and its ratio to one stock Ultralytics validation per image (yolov8n, batch 16, {n_stock} scenes):\n"
    )
    print("| corruption | " + " | ".join(f"{s} px ms | {s} px ×val" for s in sizes) + " |")
    print("|---|" + "---|---|" * len(sizes))
    for name in names:
        cells = [f"{1000 * results[name, s]:.1f} | {results[name, s] / results['stock', s]:.2f}" for s in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    mean = {s: np.mean([results[n, s] for n in corruption_names("common")]) for s in sizes}
    print(
        "| mean of the 15 common | "
        + " | ".join(f"{1000 * mean[s]:.1f} | {mean[s] / results['stock', s]:.2f}" for s in sizes)
        + " |"
    )
    print("| stock validation | " + " | ".join(f"{1000 * results['stock', s]:.1f} | 1.00" for s in sizes) + " |")


def elastic_displacement(sizes: list[int], seeds: int = 8) -> None:
    """Print how far `elastic_transform` moves pixels at each severity and size: 99th percentile and maximum, px.

    The image's red channel holds x mod 256 and its green channel y mod 256; the transform interpolates linearly, so
    the values it returns are the source coordinates (mod 256) of each output pixel. Above 256 px, output pixels
    within `WRAP_MARGIN` px of a wrap (255 -> 0) are left out: a source across it reads as a blend of 255 and 0.
    """
    print(
        "\nelastic_transform: how far pixels move (99th percentile / maximum over pixels, px; "
        f"{seeds} images per cell, labels are not moved):\n"
    )
    print("| severity | " + " | ".join(f"{s} px p99 | {s} px max" for s in sizes) + " |")
    print("|---|" + "---|---|" * len(sizes))
    rows = {s: [] for s in SEVERITIES}
    for size in sizes:
        yy, xx = np.mgrid[:size, :size]
        for severity in SEVERITIES:
            p99, top = [], []
            for seed in range(seeds):
                ramp = np.stack([xx % 256, yy % 256, np.full_like(xx, seed)], -1).astype(np.uint8)
                out = corrupt_image(ramp, "elastic_transform", severity).astype(int)
                moved = [((out[..., c] - ramp[..., c].astype(int) + 128) % 256) - 128 for c in (0, 1)]
                keep = np.ones((size, size), bool)
                if size > 256:
                    keep = np.all([(v % 256 >= WRAP_MARGIN) & (v % 256 < 256 - WRAP_MARGIN) for v in (xx, yy)], 0)
                dist = np.hypot(*moved)[keep]
                p99.append(np.percentile(dist, 99))
                top.append(dist.max())
            rows[severity].append(f"{np.mean(p99):.1f} | {max(top):.1f}")
    for severity, cells in rows.items():
        print(f"| {severity} | " + " | ".join(cells) + " |")


def wall_time(model: str, names: list[str], severities: list[int], imgsz: int) -> None:
    """Print the wall time of building and validating digits-det val's corrupted sets against a clean validation."""
    data = resolve_dataset("data/digits-det.yaml")  # the user's cache: built once
    with tempfile.TemporaryDirectory() as tmp:
        common = {"attacks": "", "imgsz": imgsz, "project": tmp, "exist_ok": True, "verbose": False}

        def clean_seconds() -> float:
            """Time one clean validation."""
            t = time.perf_counter()
            validate_advamd(model, data, name="clean", **common)
            return time.perf_counter() - t

        clean_seconds()  # warm-up
        cleans = [clean_seconds()]
        os.environ["YOLO_ADVAMD_DATA"] = str(Path(tmp) / "cache")  # a cold cache for the corrupted sets
        split = corruption_split(data, "detect")
        t = time.perf_counter()
        corrupted_sets(split, names, severities)
        build = time.perf_counter() - t
        cleans.append(clean_seconds())
        t = time.perf_counter()
        out = validate_advamd(model, data, name="corrupted", corruptions=names, severities=severities, **common)
        validate = time.perf_counter() - t
        cleans.append(clean_seconds())
    clean = statistics.median(cleans)  # before, between and after: a load spike on the shared cores moves one only
    n, sets = len(split.images), len(names) * len(severities)
    print(f"\nWall time on digits-det val ({n} images, {imgsz} px), {os.cpu_count()} cores, {model}:\n")
    print("| what | s | × one clean validation |\n|---|---|---|")
    for what, seconds in (
        (f"one clean validation (median of {', '.join(f'{c:.1f}' for c in cleans)} s)", clean),
        (f"building the {sets} corrupted sets (cold cache, {n * sets} images)", build),
        (f"validating clean + the {sets} sets (warm cache)", validate),
        ("  of which one validation, on average", validate / (sets + 1)),
        ("total, cold cache", build + validate),
    ):
        print(f"| {what} | {seconds:.1f} | {seconds / clean:.1f} |")
    print(
        f"\nmPC {100 * out['rows'][0]['stats']['mPC']['metrics/mAP50-95(B)']:.2f}, "
        f"rPC {100 * out['rows'][0]['stats']['rPC']['metrics/mAP50-95(B)']:.2f} (box mAP50-95, %)"
    )


def main() -> None:
    """Parse the arguments and run the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 640], help="image sides, px")
    parser.add_argument("--images", type=int, default=4, help="scenes per size for the per-corruption cost")
    parser.add_argument("--stock-images", type=int, default=64, help="scenes per size for the stock validation")
    parser.add_argument("--model", default=MODEL, help="the detector validated")
    parser.add_argument("--wall", action="store_true", help="also time the full benchmark on digits-det val")
    parser.add_argument("--corruptions", default="common", help="the sets of --wall: common, all or names")
    parser.add_argument("--severities", default="1,2,3,4,5", help="the severities of --wall")
    args = parser.parse_args()
    use_all_cores()
    print("Other jobs may share the CPU cores: compare the ratios, measured in the same run, not absolute times.")
    model, *_ = load_model(args.model, "benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        corruption_costs(args.sizes, args.images, args.stock_images, model, Path(tmp))
    elastic_displacement(args.sizes)
    if args.wall:
        wall_time(args.model, parse_corruptions(args.corruptions), parse_severities(args.severities), 160)


if __name__ == "__main__":
    main()
