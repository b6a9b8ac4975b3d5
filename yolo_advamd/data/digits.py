"""digits-det: a small detection dataset composed from scikit-learn's real handwritten digit scans, built offline.

Each scene is an `imgsz` x `imgsz` 3-channel PNG holding 1 to 6 non-overlapping digits, each an 8x8 scan from
`sklearn.datasets.load_digits` (1,797 scans, 10 classes) scaled to a square of 16 to 64 px, drawn either as dark ink on
paper or as bright strokes on a dark textured background. A box covers the scan's inked cells (8x8 cells with value
>= 4 of 16) scaled with the square: its height is the full square (every scan has ink in all 8 rows), its width the
inked columns. Class `k` is the digit `k`.

Layout of a built dataset (Ultralytics layout plus COCO JSON for the val split):
    <root>/images/{train,val}/000001.png ...   scenes, numeric stems counted from 1 per split
    <root>/labels/{train,val}/000001.txt ...   YOLO labels: `class cx cy w h`, normalized
    <root>/annotations/instances_val.json      val split in COCO format (see `coco_json`)
    <root>/sources.json                        per object: source scan index and the square it was drawn in
    <root>/digits-det.yaml                     Ultralytics data YAML with an absolute `path`
    <root>/.complete                           written last: a root without it is never used

The same arguments give byte-identical files: every scene draws from its own `numpy` Generator seeded with
`(seed, split, index)` (so scene `i` does not depend on how many scenes are built), and OpenCV's PNG encoder is
deterministic. Train and val draw from disjoint sets of source scans, split ~80/20 once with the seed.
"""

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml

NAME = "digits-det"
VERSION = 1  # bump when the generated data changes: cached builds of other versions are not reused
NAMES = {i: str(i) for i in range(10)}
SPLITS = ("train", "val")
VAL_FRACTION = 0.2  # share of source scans reserved for the val split
MIN_SIZE, MAX_SIZE = 16, 64  # side of a digit's square, px
MAX_OBJECTS = 6
INK_THRESHOLD = 4.0  # a scan cell (0..16) with at least this value counts as ink for the box
PLACEMENT_TRIES = 50  # random positions tried per digit before it is dropped from a crowded scene
COMPLETE_MARKER = ".complete"
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fastest; level 9 saves ~10% for 5x the time (grain dominates)


def cache_dir():
    """Return the directory that holds built datasets: `$YOLO_ADVAMD_DATA`, else `<user cache>/yolo_advamd`.

    Returns:
        (Path): The cache directory (not created here).
    """
    if os.environ.get("YOLO_ADVAMD_DATA"):
        return Path(os.environ["YOLO_ADVAMD_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yolo_advamd"


def dataset_dir(seed=0, n_train=2000, n_val=500, imgsz=160, root=None):
    """Return the directory of the digits-det build for these arguments, one per configuration.

    Args:
        seed (int): Random seed of the build.
        n_train (int): Number of train scenes.
        n_val (int): Number of val scenes.
        imgsz (int): Side of a scene, px.
        root (str | Path | None): Parent directory; `cache_dir()` when None.

    Returns:
        (Path): `<root>/digits-det-v<VERSION>-seed<seed>-train<n_train>-val<n_val>-<imgsz>px`.
    """
    root = cache_dir() if root is None else Path(root)
    return root / f"{NAME}-v{VERSION}-seed{seed}-train{n_train}-val{n_val}-{imgsz}px"


def is_complete(path):
    """Return True if `path` holds a finished build (its completion marker exists)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def build_digits_det(root=None, seed=0, n_train=2000, n_val=500, imgsz=160):
    """Build digits-det once and return its directory; a finished build is reused as is.

    The dataset is written to a temporary directory beside the target and renamed into place when complete, so an
    interrupted build is never used. An unfinished directory at the target is replaced; temporary directories left by
    processes that no longer run are removed.

    Args:
        root (str | Path | None): Parent directory of the build; `$YOLO_ADVAMD_DATA` or the user cache when None.
        seed (int): Random seed: the same seed and sizes give byte-identical files.
        n_train (int): Number of train scenes (>= 1).
        n_val (int): Number of val scenes (>= 1).
        imgsz (int): Side of a scene in px (>= 64, so that the largest digit fits).

    Returns:
        (Path): The dataset directory (see the module docstring for its layout).
    """
    for key, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("imgsz", imgsz, MAX_SIZE)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{key}={value!r} is invalid: {key} must be an integer >= {low}, e.g. {key}={low * 10}")
    target = dataset_dir(seed, n_train, n_val, imgsz, root)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        _write_dataset(tmp, target, seed, n_train, n_val, imgsz)
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)  # an unfinished directory at the target (not made by this code's rename)
        try:
            tmp.rename(target)
        except OSError:
            if not is_complete(target):  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temps(target):
    """Remove temporary build directories of `target` whose owning process no longer runs."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name[len(target.name) + 6 :].split("-")[0])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours to judge: unparsable name, or a live process of another user


def _write_dataset(tmp, target, seed, n_train, n_val, imgsz):
    """Write every file of the dataset into `tmp`, the completion marker last; paths in the YAML point at `target`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pools = dict(zip(SPLITS, split_scans(len(digits.images), seed)))
    width = max(6, len(str(max(n_train, n_val))))
    sources = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # OpenCV and numpy release the GIL
        for split_id, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)

            def write(i, split=split, split_id=split_id):
                """Render scene i of the split from its own generator, write its image and label, return its sources."""
                rng = np.random.default_rng([seed, split_id, i])
                image, objects = render_scene(rng, digits.images, digits.target, pools[split], imgsz)
                stem = f"{i:0{width}d}"
                cv2.imwrite(str(tmp / "images" / split / f"{stem}.png"), image, PNG_PARAMS)
                (tmp / "labels" / split / f"{stem}.txt").write_text(
                    "".join(f"{o['class']} {_yolo_box(o['box'], imgsz)}\n" for o in objects)
                )
                return stem, [{"scan": o["scan"], "square": o["square"]} for o in objects]

            sources[split] = dict(pool.map(write, range(1, n + 1)))
    (tmp / "annotations").mkdir()
    coco = coco_json(tmp / "labels" / "val", imgsz)
    (tmp / "annotations" / "instances_val.json").write_text(json.dumps(coco, separators=(",", ":")))
    (tmp / "sources.json").write_text(json.dumps(sources, separators=(",", ":")))
    (tmp / f"{NAME}.yaml").write_text(data_yaml(target))
    (tmp / COMPLETE_MARKER).write_text(
        json.dumps({"name": NAME, "version": VERSION, "seed": seed, "n_train": n_train, "n_val": n_val, "imgsz": imgsz})
    )


def split_scans(n_scans, seed):
    """Split scan indices once with `seed` into disjoint train and val pools (~80/20), each sorted.

    Args:
        n_scans (int): Number of source scans.
        seed (int): Random seed.

    Returns:
        (tuple[np.ndarray, np.ndarray]): Train and val scan indices.
    """
    perm = np.random.default_rng(seed).permutation(n_scans)
    n_val = round(n_scans * VAL_FRACTION)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def render_scene(rng, scans, classes, pool, imgsz):
    """Draw one scene: a textured background and 1 to 6 non-overlapping digits from `pool`.

    Args:
        rng (np.random.Generator): The scene's own generator.
        scans (np.ndarray): All scans, (N, 8, 8) with values 0..16.
        classes (np.ndarray): Class of each scan, (N,).
        pool (np.ndarray): Scan indices this split may use.
        imgsz (int): Side of the scene, px.

    Returns:
        (tuple[np.ndarray, list[dict]]): BGR uint8 image (imgsz, imgsz, 3) and its objects, each with `class`, `scan`,
            `square` ([x, y, side] where the scan was drawn) and `box` ([x0, y0, x1, y1] px, inked cells).
    """
    paper = rng.random() < 0.5  # dark ink on light paper, else bright strokes on a dark background
    image = _background(rng, imgsz, paper)
    objects, squares = [], []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        s = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
        for _ in range(PLACEMENT_TRIES):
            x, y = (int(v) for v in rng.integers(0, imgsz - s + 1, size=2))
            if all(x + s <= a or a + b <= x or y + s <= c or c + b <= y for a, c, b in squares):
                break
        else:
            continue  # no free spot for this digit: the scene keeps fewer digits
        squares.append((x, y, s))
        scan = int(rng.choice(pool))
        _draw_digit(rng, image, scans[scan], x, y, s, paper)
        box = _ink_box(scans[scan], x, y, s)
        objects.append({"class": int(classes[scan]), "scan": scan, "square": [x, y, s], "box": box})
    image += _grain(rng, imgsz)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), objects


def _background(rng, imgsz, paper):
    """Return a float (imgsz, imgsz, 3) background in [0, 1]: smooth multi-scale texture tinted like paper or slate."""
    texture = np.zeros((imgsz, imgsz), np.float32)
    for cells, weight in ((3, 0.5), (8, 0.3), (24, 0.2)):
        grid = rng.random((cells, cells)).astype(np.float32)
        texture += weight * cv2.resize(grid, (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    texture = np.clip(texture, 0.0, 1.0)[..., None]
    base = rng.uniform(0.65, 0.9) if paper else rng.uniform(0.05, 0.3)
    spread = rng.uniform(0.1, 0.25)
    tint = rng.uniform(0.85, 1.0, size=3).astype(np.float32)  # BGR
    return (np.float32(base) + np.float32(spread) * (texture - np.float32(0.5))) * tint


def _grain(rng, imgsz):
    """Return (imgsz, imgsz, 1) float32 grain: Gaussian noise drawn at half resolution and upsampled.

    Drawn at half resolution so that the PNGs stay small (full-resolution noise roughly doubles their size).
    """
    half = rng.standard_normal((imgsz // 2, imgsz // 2), dtype=np.float32) * np.float32(rng.uniform(0.01, 0.03))
    return cv2.resize(half, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)[..., None]


def _draw_digit(rng, image, scan, x, y, s, paper):
    """Blend one scan, scaled to an s x s square, into `image` in place as ink (paper) or bright strokes."""
    alpha = cv2.resize((scan / 16.0).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(alpha, 0.0, 1.0)[..., None] * np.float32(rng.uniform(0.75, 1.0))
    color = (rng.uniform(0.0, 0.3, size=3) if paper else rng.uniform(0.7, 1.0, size=3)).astype(np.float32)
    region = image[y : y + s, x : x + s]
    region[:] = region * (1.0 - alpha) + color * alpha


def _ink_box(scan, x, y, s):
    """Return [x0, y0, x1, y1] px covering the scan's inked cells scaled into the square (x, y, s)."""
    ink = scan >= INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(1)).tolist(), np.flatnonzero(ink.any(0)).tolist()
    return [
        x + (cols[0] * s) // 8,
        y + (rows[0] * s) // 8,
        x + -((-(cols[-1] + 1) * s) // 8),  # ceil division
        y + -((-(rows[-1] + 1) * s) // 8),
    ]


def _yolo_box(box, imgsz):
    """Format a pixel box [x0, y0, x1, y1] as a normalized YOLO `cx cy w h` string."""
    x0, y0, x1, y1 = box
    return f"{(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} {(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}"


def coco_json(labels_dir, imgsz):
    """Convert a split's YOLO labels to a COCO-format dict that Ultralytics' COCO evaluation path can match.

    `image_id` is the integer stem of the file (`000001.png` -> 1), as in `DetectionValidator.pred_to_json`, and
    `category_id` is class + 1 (ids 1..10), as its `class_map` for a dataset that is not COCO itself
    (`list(range(1, nc + 1))`). Boxes are `[x, y, w, h]` in pixels.

    Args:
        labels_dir (Path): Directory of YOLO `.txt` labels.
        imgsz (int): Side of the (square) images, px.

    Returns:
        (dict): COCO dict with `images`, `annotations` and `categories`.
    """
    images, annotations = [], []
    for label in sorted(Path(labels_dir).glob("*.txt")):
        image_id = int(label.stem)
        images.append({"id": image_id, "file_name": f"{label.stem}.png", "width": imgsz, "height": imgsz})
        for line in label.read_text().splitlines():
            c, cx, cy, w, h = line.split()
            w, h = float(w) * imgsz, float(h) * imgsz
            bbox = [round(float(cx) * imgsz - w / 2, 2), round(float(cy) * imgsz - h / 2, 2), round(w, 2), round(h, 2)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "digit"} for i, name in NAMES.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def data_yaml(path):
    """Return the text of an Ultralytics data YAML for a digits-det build at `path` (made absolute)."""
    data = {
        "path": str(Path(path).resolve()),
        "train": "images/train",
        "val": "images/val",
        "coco_json": "annotations/instances_val.json",  # val split in COCO format: category_id = class + 1
        "names": NAMES,
    }
    return f"# {NAME} v{VERSION}, built by yolo_advamd.data.digits\n" + yaml.safe_dump(data, sort_keys=False)
