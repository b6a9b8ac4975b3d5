"""Common corruptions: the COCO-C benchmark protocol (Michaelis et al. 2019) for validation of every task.

The corruptions are the benchmark's own functions, from `imagecorruptions-imaug` (the maintained fork of
`imagecorruptions`, same import name; the original no longer imports on current setuptools and numpy). `common` is the
benchmark's 15 (noise: gaussian, shot, impulse; blur: defocus, glass, motion, zoom; weather: snow, frost, fog; digital:
brightness, contrast, elastic, pixelate, jpeg), `all` adds its 4 held-out ones (speckle noise, gaussian blur, spatter,
saturate), each at severities 1 to 5. The summary figures are those of the benchmark's `robustness_eval.py`: P is the
clean score, mPC the mean score over the corruptions × severities, rPC = mPC / P.

A val split is corrupted once per corruption and severity, in parallel over the CPU cores, into the data cache
(`$YOLO_ADVAMD_DATA/corruptions/imagecorruptions-imaug-<version>/<dataset>-<split>-<fingerprint>/<name>-s<severity>`),
keyed by the split's files (names, sizes and times, Ultralytics' `get_hash`): a changed split gets new sets. Each set
is built in a temporary directory and renamed into place with its completion marker, so a half-written set is never
used. Layout of a set, the split's own relative paths under `images/` (classification keeps its class folders):
    images/<path in the split>      the corrupted image: lossless PNG data under the source's file name
    labels/<path in the split>.txt  detection and segmentation: the source's YOLO labels, unchanged

Determinism: the package draws from numpy's global generator (glass blur and impulse noise take a seed), so every image
is corrupted under a seed made from its pixels, the corruption and the severity; the same image gives the same bytes in
any run, order or process.

Labels stay valid: the corruptions change pixel values in place or blur them by a few pixels, except
`elastic_transform`, which moves pixels along a smooth random field (its scale is 1% of the image side): 99% of pixels
move by at most ~4 px (severity 1) to ~8 px (severity 5), the farthest by ~6 to ~14 px, alike at 160 and at 640 px
(measured by `benchmarks/corruption_speed.py`). Labels are not moved (as in COCO-C), so an object's edge can sit a few
pixels off its box: that costs small objects IoU at the strict thresholds of mAP50-95, and is part of the corruption.

Examples:
    >>> names, severities = parse_corruptions("common"), parse_severities("1,2,3,4,5")
    >>> split = corruption_split("data/digits-det.yaml", "detect")
    >>> sets = corrupted_sets(split, names, severities)  # {(name, severity): images folder}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image
from ultralytics.data.base import BaseDataset
from ultralytics.data.utils import check_cls_dataset, check_det_dataset, get_hash, img2label_paths
from ultralytics.utils import LOGGER, TQDM

from yolo_advamd.data.digits import COMPLETE_MARKER, PNG_PARAMS, cache_dir, is_complete, publish, temp_build_dir
from yolo_advamd.tasks import TASKS

PACKAGE = "imagecorruptions-imaug"  # the distribution that provides `imagecorruptions`
SUBSETS = ("common", "all")
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # the package refuses smaller images
SEEDED = ("glass_blur", "impulse_noise")  # take a `seed`; the others draw from numpy's global generator
MPC, RPC = "mPC", "rPC"


class CorruptionSplit(NamedTuple):
    """The images of a dataset split to corrupt, and where their corrupted sets are cached."""

    task: str  # the Ultralytics task: detect and segment sets carry the labels
    images: list[str]  # the split's image files, as Ultralytics lists them
    root: Path  # their common folder: a set keeps the paths below it
    cache: Path  # the folder of this split's sets


def corruption_names(subset: str = "all") -> list[str]:
    """Return the package's corruption names: `common` (the benchmark's 15) or `all` (with the 4 held-out ones)."""
    from imagecorruptions import get_corruption_names

    return get_corruption_names(subset)


def parse_corruptions(value) -> list[str]:
    """Parse `corruptions=`: `common`, `all`, or a comma list of names (a list or tuple too); [] for None or `none`.

    Raises:
        ValueError: Naming an unknown corruption and the valid values.
    """
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    items = [str(v).strip().lower() for v in items if v is not None and str(v).strip().lower() not in {"", "none"}]
    valid, names = corruption_names("all"), []
    for item in items:
        if item not in valid and item not in SUBSETS:
            raise ValueError(
                f"corruptions={value} names {item!r}, not a corruption: use common (the benchmark's 15), "
                f"all (with the 4 held-out ones) or names among {', '.join(valid)}"
            )
        names += [n for n in (corruption_names(item) if item in SUBSETS else [item]) if n not in names]
    return names


def parse_severities(value) -> list[int]:
    """Parse `severities=`: whole numbers 1 to 5, comma-separated or a list, e.g. `1,2,3,4,5` (the benchmark's).

    Raises:
        ValueError: Naming the value outside 1-5 or not a whole number.
    """
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in (str(v).strip() for v in items):
        if item not in {str(s) for s in SEVERITIES}:
            raise ValueError(
                f"severities={value} has {item or 'an empty item'}: severities are whole numbers 1 to 5, "
                "e.g. severities=1,2,3,4,5 (the benchmark's)"
            )
        out += [int(item)] if int(item) not in out else []
    return out


def column_name(name: str, severity: int) -> str:
    """Return the results column of a corruption at a severity, e.g. `fog s3`."""
    return f"{name} s{severity}"


def image_seed(image: np.ndarray, name: str, severity: int) -> int:
    """Return the 32-bit seed of an image's corruption: a hash of its pixels and shape, the corruption and severity."""
    h = hashlib.sha256(f"{image.shape}|{name}|{severity}|".encode())
    h.update(np.ascontiguousarray(image).data)
    return int.from_bytes(h.digest()[:4], "little")


def corrupt_image(image: np.ndarray, name: str, severity: int) -> np.ndarray:
    """Corrupt an RGB uint8 image (H, W, 3), both sides >= 32 px, with the package's function, deterministically.

    Args:
        image (np.ndarray): The image, RGB as the package expects.
        name (str): A corruption name (`corruption_names`).
        severity (int): 1 to 5.

    Returns:
        (np.ndarray): The corrupted image, uint8 of the same shape; a function of (image, name, severity) only.
    """
    from imagecorruptions import corrupt

    seed = image_seed(image, name, severity)
    np.random.seed(seed)  # every corruption but the two below draws from numpy's global generator
    return corrupt(image, severity=severity, corruption_name=name, **({"seed": seed} if name in SEEDED else {}))


def corruption_split(data: str, task: str, split: str = "val") -> CorruptionSplit:
    """Return the images of a resolved dataset's split to corrupt, refusing data without them before any work.

    Args:
        data (str): A resolved dataset (`resolve_dataset`): a data YAML, or a classification folder.
        task (str): The model's task.
        split (str): The validation split, `val` unless Ultralytics' `split=` says otherwise.

    Raises:
        ValueError: If the split has no images, or an image is unreadable or smaller than 32 px (the package's limit).
    """
    info = (
        check_cls_dataset(data, split=split)
        if TASKS[task].classifier
        else check_det_dataset(data, autodownload=False, split=split)
    )
    where = info.get(split)
    lister = type("Lister", (), {"prefix": "", "fraction": 1.0})()  # what BaseDataset.get_img_files reads of self
    try:  # Ultralytics' own listing: folders searched recursively, *.txt lists of files
        images = BaseDataset.get_img_files(lister, [str(p) for p in where] if isinstance(where, list) else str(where))
    except FileNotFoundError:  # no such split (None), or no image in it
        images = []
    if not images:
        raise ValueError(
            f"corruptions= corrupts the {split} images and data={data} has none ({split}: {where}): "
            f"use data with {split} images, or leave corruptions= off"
        )
    for file in images:
        try:
            with Image.open(file) as im:
                size = im.size
        except OSError as e:
            raise ValueError(f"corruptions= cannot read {file} ({e}): repair or remove the image") from None
        if min(size) < MIN_SIDE:
            raise ValueError(
                f"corruptions= needs images of at least {MIN_SIDE} px a side (the corruption package's "
                f"limit) and {file} is {size[0]}x{size[1]}: use larger images or leave corruptions= off"
            )
    root = Path(os.path.commonpath([os.path.dirname(f) for f in images]))
    key = f"{Path(data).stem}-{split}-{get_hash(images)[:16]}"
    return CorruptionSplit(task, images, root, cache_dir() / "corruptions" / f"{PACKAGE}-{version(PACKAGE)}" / key)


def set_dir(split: CorruptionSplit, name: str, severity: int) -> Path:
    """Return the directory of the split's set for a corruption and severity (complete or not)."""
    return split.cache / f"{name}-s{severity}"


def corrupted_sets(split: CorruptionSplit, names: list[str], severities: list[int]) -> dict[tuple[str, int], Path]:
    """Return the images folder of every (corruption, severity) set of the split, building the missing ones first.

    Missing sets are built in one pass over a process per CPU core (the package's global generator rules out
    threads), with a progress bar; complete sets are reused as they are.

    Returns:
        (dict[tuple[str, int], Path]): `{(name, severity): <set>/images}`, what Ultralytics' dataloader takes.
    """
    wanted = [(n, s) for n in names for s in severities]
    missing = [(n, s) for n, s in wanted if not is_complete(set_dir(split, n, s))]
    if missing:
        LOGGER.info(f"Corrupting {len(split.images)} images of {split.root} into {len(missing)} sets in {split.cache}")
        temps = {ns: temp_build_dir(set_dir(split, *ns)) for ns in missing}
        try:
            jobs = [
                (f, str(temps[ns] / "images" / os.path.relpath(f, split.root)), *ns)
                for ns in missing
                for f in split.images
            ]
            workers = min(os.cpu_count() or 1, len(jobs))
            with ProcessPoolExecutor(workers) as pool:
                done = pool.map(_corrupt_file, jobs, chunksize=max(1, min(16, math.ceil(len(jobs) / (4 * workers)))))
                for _ in TQDM(done, total=len(jobs), desc="corrupting"):
                    pass
            for ns, tmp in temps.items():
                _finish_set(split, tmp, *ns)
                publish(tmp, set_dir(split, *ns))
        finally:
            for tmp in temps.values():
                shutil.rmtree(tmp, ignore_errors=True)
    return {(n, s): set_dir(split, n, s) / "images" for n, s in wanted}


def _corrupt_file(job: tuple[str, str, str, int]) -> None:
    """Corrupt one image file into another (PNG data under the given name): a worker's job."""
    source, target, name, severity = job
    bgr = cv2.imread(source, cv2.IMREAD_COLOR)  # as Ultralytics reads it
    if bgr is None:
        raise ValueError(f"cannot read {source}: repair or remove the image")
    out = corrupt_image(np.ascontiguousarray(bgr[..., ::-1]), name, severity)[..., ::-1]
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    cv2.imencode(".png", out, PNG_PARAMS)[1].tofile(target)


def _finish_set(split: CorruptionSplit, tmp: Path, name: str, severity: int) -> None:
    """Copy the split's labels into a built set (detection, segmentation) and write its completion marker last."""
    if not TASKS[split.task].classifier:
        for file in split.images:
            label = Path(img2label_paths([file])[0])
            if label.is_file():
                new = Path(img2label_paths([str(tmp / "images" / os.path.relpath(file, split.root))])[0])
                new.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(label, new)
    marker = {
        "corruption": name,
        "severity": severity,
        "images": len(split.images),
        "source": str(split.root),
        "package": f"{PACKAGE}-{version(PACKAGE)}",
    }
    (tmp / COMPLETE_MARKER).write_text(json.dumps(marker))


def mpc_corruptions(names: list[str]) -> list[str]:
    """Return the corruptions mPC averages: the `common` ones among `names`, or all of `names` when none is."""
    return [n for n in names if n in corruption_names("common")] or names


def mpc_note(names: list[str], severities: list[int]) -> str:
    """Return what the mPC of a run averages, against the benchmark's 15 corruptions × severities 1-5."""
    used = mpc_corruptions(names)
    held_out = [n for n in names if n not in used]
    scope = "the benchmark's" if len(used) == 15 and len(severities) == 5 else "the benchmark: 15 × 5"
    return (
        f"mPC: mean over {len(used)} corruption(s) × {len(severities)} severity level(s) ({scope})"
        + (f", held-out {', '.join(held_out)} not included" if held_out else "")
        + "; rPC = mPC / benign."
    )


def robustness(stats: dict[str, dict], names: list[str], severities: list[int]) -> dict[str, dict]:
    """Return the benchmark's summary figures of one model from its statistics per results column.

    mPC is the mean over the corruptions of `mpc_corruptions` × the severities, rPC = mPC / P with P the benign
    score, for every statistic.

    Args:
        stats (dict[str, dict]): `{column: {statistic: value}}` with `benign` and a `column_name` per set.
        names (list[str]): The corruptions run.
        severities (list[int]): The severities run.

    Returns:
        (dict[str, dict]): `{"mPC": {statistic: value}, "rPC": {statistic: value}}`.
    """
    runs = [stats[column_name(n, s)] for n in mpc_corruptions(names) for s in severities]
    mpc = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    return {MPC: mpc, RPC: {k: v / stats["benign"][k] if stats["benign"].get(k) else math.nan for k, v in mpc.items()}}


def grid(stats: dict[str, dict], names: list[str], severities: list[int], key: str) -> np.ndarray:
    """Return one statistic as a (corruption, severity) array, e.g. for a table or a heatmap."""
    return np.array([[stats[column_name(n, s)][key] for s in severities] for n in names], dtype=float)
