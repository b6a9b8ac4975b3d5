"""digits-det, digits-seg and digits-cls: small datasets composed from scikit-learn's real handwritten digit scans,
offline.

Every digit is an 8x8 scan from `sklearn.datasets.load_digits` (1,797 scans, 10 classes; class `k` is the digit `k`)
scaled to a square and drawn either as dark ink on paper or as bright strokes on a dark textured background, under fine
grain. A scan's ink is its cells with value >= 4 of 16 (`INK_THRESHOLD`).

- digits-det (detection): each scene is an `imgsz` x `imgsz` 3-channel PNG holding 1 to 6 non-overlapping digits, each
  in a square of 16 to 64 px. A box covers the ink scaled with the square: its height is the full square (every scan has
  ink in all 8 rows), its width the inked columns.
- digits-seg (instance segmentation): the very scenes of digits-det (the same arguments give the same images), each
  digit labelled with the outline of its ink scaled with the square, holes kept (see `ink_polygon`). The outline's box
  is the digits-det box within 1 px: the box rounds the ink's edges outward to whole pixels, the outline does not.
- digits-cls (classification): each image is an `imgsz` x `imgsz` 3-channel PNG of one digit, in a square of 3/4 to all
  of the side at a random spot. Classes are balanced: image `i` shows class `(i - 1) % 10`. 32 px by default: a scan has
  8x8 cells, so 4 px per cell keep all of its detail, and yolov8n-cls at imgsz=32 trains on 2,000 images in seconds per
  epoch on 2 CPU cores (64 px would cost 4x for no more detail).

Layout of a built digits-det or digits-seg dataset (Ultralytics detection / segmentation layout):
    <root>/images/{train,val}/000001.png ...  scenes, numeric stems counted from 1 per split
    <root>/labels/{train,val}/000001.txt ...  YOLO labels, normalized: det `class cx cy w h`, seg `class x1 y1 ...`
    <root>/annotations/instances_val.json     digits-det only: the val split in COCO format (see `coco_json`)
    <root>/<name>.yaml                        Ultralytics data YAML with an absolute `path`
Layout of a built digits-cls dataset (Ultralytics classification layout: `data=` is the directory itself):
    <root>/{train,val}/<class>/000001.png ...  class folders 0..9, numeric stems counted from 1 per split
Both layouts also hold:
    <root>/sources.json                        per image: each digit's source scan index and the square it was drawn in
    <root>/.complete                           written last: a root without it is never used

The same arguments give byte-identical files: every image draws from its own `numpy` Generator seeded with
`(seed, split, index)` (so image `i` does not depend on how many images are built), and OpenCV's PNG encoder is
deterministic. Train and val draw from disjoint sets of source scans, split ~80/20 once with the seed.
"""

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import yaml

NAME = "digits-det"
SEG_NAME, CLS_NAME = "digits-seg", "digits-cls"
NAMES = {i: str(i) for i in range(10)}
SPLITS = ("train", "val")
VAL_FRACTION = 0.2  # share of source scans reserved for the val split
MIN_SIZE, MAX_SIZE = 16, 64  # side of a digit's square in a scene, px
MAX_OBJECTS = 6
INK_THRESHOLD = 4.0  # a scan cell (0..16) with at least this value counts as ink, for boxes and outlines alike
PLACEMENT_TRIES = 50  # random positions tried per digit before it is dropped from a crowded scene
COMPLETE_MARKER = ".complete"
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fastest; level 9 saves ~10% for 5x the time (grain dominates)


class DatasetSpec(NamedTuple):
    """What differs between the embedded datasets; everything else (cache, scans, rendering) is shared."""

    task: str  # the Ultralytics task it trains
    version: int  # bump when its generated data changes: cached builds of other versions are not reused
    imgsz: int  # default image side, px
    min_imgsz: int  # smallest image side that fits its digits, px
    min_images: int  # fewest images per split: digits-cls needs an image in every class folder


DATASETS = {
    NAME: DatasetSpec("detect", 1, 160, MAX_SIZE, 1),
    SEG_NAME: DatasetSpec("segment", 1, 160, MAX_SIZE, 1),
    CLS_NAME: DatasetSpec("classify", 1, 32, 16, len(NAMES)),
}
# the keys of a `builder: <name>` YAML and their defaults, per dataset
BUILDER_KEYS = {name: {"seed": 0, "n_train": 2000, "n_val": 500, "imgsz": d.imgsz} for name, d in DATASETS.items()}


def cache_dir():
    """Return the directory that holds built datasets: `$YOLO_ADVAMD_DATA`, else `<user cache>/yolo_advamd`.

    Returns:
        (Path): The cache directory (not created here).
    """
    if os.environ.get("YOLO_ADVAMD_DATA"):
        return Path(os.environ["YOLO_ADVAMD_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yolo_advamd"


def dataset_spec(name):
    """Return the `DatasetSpec` of an embedded dataset, refusing unknown names with the valid ones.

    Args:
        name (str): One of `DATASETS`: digits-det, digits-seg or digits-cls.

    Returns:
        (DatasetSpec): Its task, version, default and smallest image side, and fewest images per split.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"{name!r} is not an embedded dataset: choose one of {', '.join(DATASETS)}, e.g. {NAME}")
    return DATASETS[name]


def dataset_dir(name=NAME, seed=0, n_train=2000, n_val=500, imgsz=None, root=None):
    """Return the directory of the build of dataset `name` for these arguments, one per configuration.

    Args:
        name (str): Embedded dataset: digits-det, digits-seg or digits-cls.
        seed (int): Random seed of the build.
        n_train (int): Number of train images.
        n_val (int): Number of val images.
        imgsz (int | None): Side of an image, px; the dataset's default (160, 160, 32) when None.
        root (str | Path | None): Parent directory; `cache_dir()` when None.

    Returns:
        (Path): `<root>/<name>-v<version>-seed<seed>-train<n_train>-val<n_val>-<imgsz>px`.
    """
    spec = dataset_spec(name)
    root = cache_dir() if root is None else Path(root)
    imgsz = spec.imgsz if imgsz is None else imgsz
    return root / f"{name}-v{spec.version}-seed{seed}-train{n_train}-val{n_val}-{imgsz}px"


def is_complete(path):
    """Return True if `path` holds a finished build (its completion marker exists)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def build_digits(name=NAME, root=None, seed=0, n_train=2000, n_val=500, imgsz=None):
    """Build an embedded digits dataset once and return its directory; a finished build is reused as is.

    The dataset is written to a temporary directory beside the target and renamed into place when complete, so an
    interrupted build is never used. An unfinished directory at the target is replaced; temporary directories left by
    processes that no longer run are removed.

    Args:
        name (str): Embedded dataset: digits-det, digits-seg or digits-cls (see the module docstring).
        root (str | Path | None): Parent directory of the build; `$YOLO_ADVAMD_DATA` or the user cache when None.
        seed (int): Random seed: the same name, seed and sizes give byte-identical files.
        n_train (int): Number of train images (>= 1; >= 10 for digits-cls, one per class folder).
        n_val (int): Number of val images (>= 1; >= 10 for digits-cls).
        imgsz (int | None): Side of an image in px (>= 64 for scenes, so that the largest digit fits; >= 16 for
            digits-cls); the dataset's default (160, 160, 32) when None.

    Returns:
        (Path): The dataset directory (see the module docstring for its layout).
    """
    spec = dataset_spec(name)
    imgsz = spec.imgsz if imgsz is None else imgsz
    checks = (
        ("n_train", n_train, spec.min_images),
        ("n_val", n_val, spec.min_images),
        ("imgsz", imgsz, spec.min_imgsz),
    )
    for key, value, low in checks:
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(
                f"{key}={value!r} is invalid for {name}: {key} must be an integer >= {low}, e.g. {key}={low * 10}"
            )
    target = dataset_dir(name, seed, n_train, n_val, imgsz, root)
    if is_complete(target):
        return target
    tmp = temp_build_dir(target)
    try:
        _write_dataset(tmp, target, name, seed, n_train, n_val, imgsz)
        publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def temp_build_dir(target):
    """Make and return a temporary directory beside `target` to build it in, after removing stale ones.

    Its name carries this process's id, so that `remove_stale_temps` can tell the directories of dead processes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def publish(tmp, target):
    """Rename a finished build `tmp` (its completion marker written last) to `target`, atomically.

    An unfinished directory at the target is replaced; a complete one, built concurrently by another process, wins.
    """
    if target.exists() and not is_complete(target):
        shutil.rmtree(target)  # an unfinished directory at the target (not made by this code's rename)
    try:
        tmp.rename(target)
    except OSError:
        if not is_complete(target):  # not a concurrent build that finished first
            raise


def build_digits_det(root=None, seed=0, n_train=2000, n_val=500, imgsz=160):
    """Build digits-det once and return its directory: `build_digits` with `name="digits-det"`.

    Args:
        root (str | Path | None): Parent directory of the build; `$YOLO_ADVAMD_DATA` or the user cache when None.
        seed (int): Random seed: the same seed and sizes give byte-identical files.
        n_train (int): Number of train scenes (>= 1).
        n_val (int): Number of val scenes (>= 1).
        imgsz (int): Side of a scene in px (>= 64, so that the largest digit fits).

    Returns:
        (Path): The dataset directory (see the module docstring for its layout).
    """
    return build_digits(NAME, root, seed, n_train, n_val, imgsz)


def remove_stale_temps(target):
    """Remove temporary build directories of `target` whose owning process no longer runs."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name[len(target.name) + 6 :].split("-")[0])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours to judge: unparsable name, or a live process of another user


def _write_dataset(tmp, target, name, seed, n_train, n_val, imgsz):
    """Write every file of dataset `name` into `tmp`, the completion marker last; paths in a YAML point at `target`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pools = dict(zip(SPLITS, split_scans(len(digits.images), seed)))
    width = max(6, len(str(max(n_train, n_val))))
    polygons = [ink_polygon(scan) for scan in digits.images] if name == SEG_NAME else None
    sources = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # OpenCV and numpy release the GIL
        for split_id, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
            if name == CLS_NAME:
                write = _crop_writer(tmp, split, digits, pools[split], imgsz, width)
            else:
                write = _scene_writer(tmp, split, digits, pools[split], imgsz, width, polygons)

            def job(i, write=write, split_id=split_id):
                """Write image i of the split from its own generator; return its stem and sources."""
                return write(i, np.random.default_rng([seed, split_id, i]))

            sources[split] = dict(pool.map(job, range(1, n + 1)))
    if name == NAME:
        (tmp / "annotations").mkdir()
        coco = coco_json(tmp / "labels" / "val", imgsz)
        (tmp / "annotations" / "instances_val.json").write_text(json.dumps(coco, separators=(",", ":")))
    (tmp / "sources.json").write_text(json.dumps(sources, separators=(",", ":")))
    if name != CLS_NAME:
        (tmp / f"{name}.yaml").write_text(data_yaml(target, name))
    version = DATASETS[name].version
    (tmp / COMPLETE_MARKER).write_text(
        json.dumps({"name": name, "version": version, "seed": seed, "n_train": n_train, "n_val": n_val, "imgsz": imgsz})
    )


def _scene_writer(out, split, digits, pool, imgsz, width, polygons=None):
    """Make a split's image and label directories; return the function that writes scene i: (i, rng) -> stem, sources.

    Labels are digits-det boxes, or digits-seg outlines when `polygons` (each scan's `ink_polygon`) is given.
    """
    (out / "images" / split).mkdir(parents=True)
    (out / "labels" / split).mkdir(parents=True)

    def write(i, rng):
        """Render scene i, write its image and label; return its stem and each digit's scan and square."""
        image, objects = render_scene(rng, digits.images, digits.target, pool, imgsz)
        stem = f"{i:0{width}d}"
        cv2.imwrite(str(out / "images" / split / f"{stem}.png"), image, PNG_PARAMS)
        if polygons is None:
            labels = [_yolo_box(o["box"], imgsz) for o in objects]
        else:
            labels = [_yolo_polygon(polygons[o["scan"]], o["square"], imgsz) for o in objects]
        (out / "labels" / split / f"{stem}.txt").write_text(
            "".join(f"{o['class']} {label}\n" for o, label in zip(objects, labels))
        )
        return stem, [{"scan": o["scan"], "square": o["square"]} for o in objects]

    return write


def _crop_writer(out, split, digits, pool, imgsz, width):
    """Make a split's class folders; return the function that writes digits-cls image i: (i, rng) -> stem, sources."""
    by_class = {c: pool[digits.target[pool] == c] for c in NAMES}
    for name in NAMES.values():
        (out / split / name).mkdir(parents=True)

    def write(i, rng):
        """Draw image i, of class (i - 1) % 10, into its class folder; return its stem and its scan and square."""
        c = (i - 1) % len(NAMES)
        scan = int(rng.choice(by_class[c]))
        image, square = render_crop(rng, digits.images[scan], imgsz)
        stem = f"{i:0{width}d}"
        cv2.imwrite(str(out / split / NAMES[c] / f"{stem}.png"), image, PNG_PARAMS)
        return stem, [{"scan": scan, "square": square}]

    return write


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
    return _finish(rng, image, imgsz), objects


def render_crop(rng, scan, imgsz):
    """Draw one digits-cls image: a textured background and the scan in a square of 3/4 to all of the side.

    Args:
        rng (np.random.Generator): The image's own generator.
        scan (np.ndarray): The (8, 8) scan to draw, values 0..16.
        imgsz (int): Side of the image, px.

    Returns:
        (tuple[np.ndarray, list[int]]): BGR uint8 image (imgsz, imgsz, 3) and the square [x, y, side] of the digit.
    """
    paper = rng.random() < 0.5  # dark ink on light paper, else bright strokes on a dark background
    image = _background(rng, imgsz, paper)
    s = int(rng.integers(imgsz * 3 // 4, imgsz + 1))
    x, y = (int(v) for v in rng.integers(0, imgsz - s + 1, size=2))
    _draw_digit(rng, image, scan, x, y, s, paper)
    return _finish(rng, image, imgsz), [x, y, s]


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


def _finish(rng, image, imgsz):
    """Add grain to a float (imgsz, imgsz, 3) image in [0, 1] in place and return it as uint8.

    The grain is Gaussian noise drawn at half resolution and upsampled, so that the PNGs stay small (full-resolution
    noise roughly doubles their size).
    """
    half = rng.standard_normal((imgsz // 2, imgsz // 2), dtype=np.float32) * np.float32(rng.uniform(0.01, 0.03))
    image += cv2.resize(half, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)[..., None]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw_digit(rng, image, scan, x, y, s, paper):
    """Blend one scan, scaled to an s x s square, into `image` in place as ink (paper) or bright strokes."""
    alpha = cv2.resize((scan / 16.0).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(alpha, 0.0, 1.0)[..., None] * np.float32(rng.uniform(0.75, 1.0))
    color = (rng.uniform(0.0, 0.3, size=3) if paper else rng.uniform(0.7, 1.0, size=3)).astype(np.float32)
    region = image[y : y + s, x : x + s]
    region[:] = region * (1.0 - alpha) + color * alpha


def _ink_box(scan, x, y, s):
    """Return [x0, y0, x1, y1] px covering the scan's inked cells scaled into the square (x, y, s), rounded outward."""
    ink = scan >= INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(1)).tolist(), np.flatnonzero(ink.any(0)).tolist()
    return [
        x + (cols[0] * s) // 8,
        y + (rows[0] * s) // 8,
        x + -((-(cols[-1] + 1) * s) // 8),  # ceil division
        y + -((-(rows[-1] + 1) * s) // 8),
    ]


def ink_polygon(scan):
    """Return the outline of a scan's inked cells as one closed polygon whose vertices lie on the 8x8 cell grid.

    The ink is traced with OpenCV contours, outer outlines and holes (`RETR_CCOMP`: the loops of a 0, 6, 8 or 9).
    YOLO-seg takes one polygon per object, so a scan with several outlines (holes, and rarely separate pieces) has them
    joined as Ultralytics' converters join a mask's pieces (`merge_multi_segment`: a two-way bridge between the closest
    vertices of consecutive outlines) rather than keeping the largest. Filled as Ultralytics fills it (`cv2.fillPoly`),
    the polygon is the ink: holes stay empty and no piece is dropped.

    Args:
        scan (np.ndarray): One (8, 8) scan, values 0..16.

    Returns:
        (np.ndarray): (K, 2) int vertices (x, y) in cell units 0..8; grid line j is the left (top) edge of cell j.
    """
    ink = np.kron((scan >= INK_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    # Traced at 2x, a contour point is a pixel on the rim of the ink (or of a hole) whose nearest grid line is
    # (p + 1) // 2: pixel 2j is the left (top) half of cell j, next to line j; pixel 2j + 1 the other half, by j + 1.
    contours = cv2.findContours(ink, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)[0]
    outlines = [(c.reshape(-1, 2) + 1) // 2 for c in contours]
    if len(outlines) == 1:
        polygon = outlines[0]
    else:
        from ultralytics.data.converter import merge_multi_segment

        polygon = np.concatenate(merge_multi_segment(outlines))
    keep = np.r_[True, (polygon[1:] != polygon[:-1]).any(1)]  # inner corners of the 2x rim land on one grid point
    return polygon[keep]


def _yolo_box(box, imgsz):
    """Format a pixel box [x0, y0, x1, y1] as a normalized YOLO `cx cy w h` string."""
    x0, y0, x1, y1 = box
    return f"{(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} {(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}"


def _yolo_polygon(polygon, square, imgsz):
    """Format an `ink_polygon` scaled into the square [x, y, side] as a normalized YOLO-seg `x1 y1 x2 y2 ...` string."""
    x, y, s = square
    points = (np.array([x, y]) + polygon * (s / 8)) / imgsz
    return " ".join(f"{v:.6f}" for v in points.ravel())


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


def data_yaml(path, name=NAME):
    """Return the text of an Ultralytics data YAML for a digits-det or digits-seg build at `path` (made absolute).

    Args:
        path (str | Path): Directory of the build.
        name (str): digits-det (whose YAML also names its COCO JSON) or digits-seg.

    Returns:
        (str): The YAML text, headed by a comment naming the dataset and its version.
    """
    data = {"path": str(Path(path).resolve()), "train": "images/train", "val": "images/val"}
    if name == NAME:
        data["coco_json"] = "annotations/instances_val.json"  # val split in COCO format: category_id = class + 1
    data["names"] = NAMES
    header = f"# {name} v{dataset_spec(name).version}, built by yolo_advamd.data.digits\n"
    return header + yaml.safe_dump(data, sort_keys=False)
