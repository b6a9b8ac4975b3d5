"""Datasets: the embedded digits builders and `resolve_dataset`, which turns a `data=` argument into what Ultralytics
takes.

`resolve_dataset` is the one gate between a user's `data=` and Ultralytics: it builds an embedded digits dataset
(digits-det, digits-seg, digits-cls) when asked for it and refuses, with the expected location and how to get the
images, any dataset whose images are not on disk, before Ultralytics' `check_det_dataset` or `check_cls_dataset` could
try to download it.
"""

from pathlib import Path

import yaml

from yolo_advamd.data.digits import (
    BUILDER_KEYS,
    DATASETS,
    build_digits,
    build_digits_det,
    cache_dir,
    dataset_dir,
    dataset_spec,
)

__all__ = (
    "BUILDER_KEYS",
    "DATASETS",
    "build_digits",
    "build_digits_det",
    "cache_dir",
    "dataset_dir",
    "check_task_data",
    "resolve_dataset",
)


def resolve_dataset(data):
    """Return what Ultralytics' `data=` needs for `data`, building an embedded digits dataset when it names one.

    Args:
        data (str | Path): A data YAML path, or a classification dataset directory. A YAML with `builder: digits-det`,
            `digits-seg` or `digits-cls` (like `data/digits-det.yaml`), or a bare name such as `digits-seg` /
            `digits-seg.yaml`, is built on first use into the cache (`$YOLO_ADVAMD_DATA`). Any other YAML is returned
            as given once its `train` and `val` images are found on disk, and an existing directory (Ultralytics'
            classification layout, `train/<class>/*.png`) as given; nothing is ever downloaded.

    Returns:
        (str): For detection and segmentation, the path of a data YAML that `ultralytics.data.utils.check_det_dataset`
            accepts offline (for digits-det and digits-seg the build's own YAML, with an absolute `path`); for
            classification, the dataset directory that `check_cls_dataset` accepts offline (for digits-cls the build
            directory itself).

    Raises:
        FileNotFoundError: If the YAML or directory does not exist or its images are not on disk; the message says
            where they are expected and how to get them.
        ValueError: If a builder YAML names an unknown builder or has an unknown key.
    """
    data = str(data)
    if "://" in data:
        raise FileNotFoundError(
            f"data={data} is a URL; yolo-advamd runs offline and downloads nothing. Download the dataset yourself and "
            f"pass its local data YAML, or use the embedded default data=data/digits-det.yaml."
        )
    path = Path(data)
    if path.is_dir():
        return _check_cls_dir(path)
    if not path.is_file():
        if path.stem in DATASETS and path.suffix in {"", ".yaml", ".yml"}:
            return _build(path.stem, BUILDER_KEYS[path.stem])
        from ultralytics.utils.checks import check_file

        found = check_file(data, hard=False) if path.suffix in {".yaml", ".yml"} else ""  # Ultralytics' bundled YAMLs
        if not found:
            raise FileNotFoundError(
                f"data={data} does not exist. Pass the path of a data YAML (e.g. data=data/coco.yaml) or of a "
                f"classification directory, or use an embedded dataset built offline on first use: "
                f"data=data/digits-det.yaml, data/digits-seg.yaml or data/digits-cls.yaml."
            )
        path = Path(found)
    cfg = yaml.safe_load(path.read_text()) or {}
    if "builder" in cfg:
        return _build_from_yaml(path, cfg)
    _check_images(path, cfg)
    return str(path)


def check_task_data(task: str, data: str) -> None:
    """Refuse, before any work, a resolved dataset (`resolve_dataset`) that does not fit the model's task.

    A classifier needs a folder of class folders, each with images in `train/` and `val/`; a detector or segmentation
    model a data YAML; a segmentation model polygon labels (`class x1 y1 x2 y2 ...`), not boxes (checked on the first
    50 label files of a `train` images folder).

    Raises:
        ValueError: Naming the mismatch and the fix.
    """
    from ultralytics.data.utils import IMG_FORMATS

    path = Path(data)
    if task == "classify":
        if not path.is_dir():
            raise ValueError(
                f"data={data} is a data YAML, and a classifier trains on a folder of class folders "
                "(train/<class>/*.png, val/<class>/*.png): e.g. data=data/digits-cls.yaml"
            )
        for split in ("train", "val"):
            folders = sorted(d for d in (path / split).glob("*") if d.is_dir())
            empty = [d.name for d in folders if not any(f.suffix[1:].lower() in IMG_FORMATS for f in d.iterdir())]
            if empty:
                raise ValueError(
                    f"data={data}: class folder(s) {empty} in {split}/ hold no image; every class needs "
                    f"images in train/ and val/: add some or remove the folder"
                )
        return
    if path.is_dir():
        raise ValueError(
            f"data={data} is a classification folder, and a {task} model needs a data YAML with YOLO "
            "labels: e.g. data=data/digits-det.yaml"
        )
    if task == "segment":
        cfg = yaml.safe_load(path.read_text()) or {}
        train = cfg.get("train")
        images = _dataset_root(path, cfg) / train if isinstance(train, str) else None
        labels = sorted(Path(str(images).replace("images", "labels")).glob("*.txt"))[:50] if images else []
        rows = [line.split() for f in labels for line in f.read_text().splitlines() if line.strip()]
        if rows and not any(len(r) > 5 for r in rows):
            raise ValueError(
                f"data={data} has box labels (class x y w h) and a segmentation model needs polygons "
                "(class x1 y1 x2 y2 ...): e.g. data=data/digits-seg.yaml"
            )


def _build(name, keys):
    """Build embedded dataset `name` with builder `keys`; return its data YAML, or for classification its directory."""
    built = build_digits(name, **keys)
    return str(built) if dataset_spec(name).task == "classify" else str(built / f"{name}.yaml")


def _build_from_yaml(path, cfg):
    """Build the dataset described by a builder YAML (`builder: digits-det`, ...) and return `_build`'s result."""
    name = cfg["builder"]
    try:
        dataset_spec(name)
    except ValueError as error:
        raise ValueError(f"{path} has builder: {name}, but {error}") from None
    unknown = set(cfg) - set(BUILDER_KEYS[name]) - {"builder"}
    if unknown:
        raise ValueError(
            f"{path} has unknown {name} key(s) {sorted(unknown)}: valid keys are builder and "
            f"{', '.join(BUILDER_KEYS[name])}, e.g. n_train: 2000"
        )
    return _build(name, {k: cfg.get(k, v) for k, v in BUILDER_KEYS[name].items()})


def _check_cls_dir(path):
    """Return a classification dataset directory as given, or raise if Ultralytics would find no `train` images in it
    (or a `train` or `val` file that is not an image, `_check_split`)."""
    if not (path / "train").is_dir():
        raise FileNotFoundError(
            f"data={path} is a directory without a 'train' folder: a classification dataset needs "
            f"train/<class>/*.png and val/<class>/*.png, or use the embedded data=data/digits-cls.yaml."
        )
    for split in ("train", "val"):
        if (path / split).is_dir():
            _check_split(path, split, path / split, empty_ok=True)  # empty class folders: `check_task_data` names them
    return str(path)


def _dataset_root(path, cfg):
    """Resolve a data YAML's root directory the way Ultralytics' `check_det_dataset` does (without downloading)."""
    from ultralytics.utils import DATASETS_DIR

    root = Path(cfg.get("path") or path.parent)
    if not root.exists() and not root.is_absolute():
        root = (DATASETS_DIR / root).resolve()
    return root


def _check_images(path, cfg):
    """Raise, saying where and how, if a data YAML's train or val images are not on disk, or a split holds no image or
    a file that is not an image (`_check_split`)."""
    root = _dataset_root(path, cfg)
    missing, found = [], []
    for split in ("train", "val"):
        entries = cfg.get(split) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            x = (root / entry).resolve()
            if not x.exists() and str(entry).startswith("../"):
                x = (root / entry[3:]).resolve()  # Ultralytics' fallback for '../' entries
            if not x.exists():
                missing.append(f"{split}: {x}")
            found.append((split, x))
    if missing:
        how = cfg.get("how_to_get") or (
            f"Put the images there (YOLO labels in a 'labels' directory beside 'images'), or edit 'path:' in {path}."
        )
        raise FileNotFoundError(
            f"Dataset {path} is not on disk: missing {'; '.join(missing)} (dataset root {root}). "
            f"yolo-advamd downloads nothing. {how.strip()} "
            f"To run offline without it, use the embedded default data=data/digits-det.yaml."
        )
    for split, x in found:
        _check_split(path, split, x)


def _check_split(path, split, x, empty_ok=False):
    """Refuse, before Ultralytics lists and caches a split (a folder, a text file of image paths or one image), one that
    holds no image, or a file that no image reader recognizes.

    Ultralytics would fail only after writing the train split's label cache ("Error loading data from ..."), or skip a
    broken file with a misleading message: its PIL opener retries an unidentified file as HEIF and reports the missing
    `pi-heif` package. Only the first 16 bytes of each file are read (PIL's format signatures), so the check is fast.
    `empty_ok` lets a split without images pass (to be named by a more specific check).
    """
    from ultralytics.data.utils import IMG_FORMATS

    if x.is_dir():
        files = x.rglob("*")
    elif x.suffix == ".txt":  # one image path per line, './' relative to the file, as Ultralytics reads it
        lines = x.read_text(encoding="utf-8-sig").split()
        files = (x.parent / line[2:] if line.startswith("./") else Path(line) for line in lines)
    else:
        files = [x]
    images = [f for f in files if f.suffix[1:].lower() in IMG_FORMATS]
    if not images and not empty_ok:
        raise FileNotFoundError(
            f"Dataset {path}: the {split} images {x} hold no image ({', '.join(sorted(IMG_FORMATS))}): put the {split} "
            f"images there, or point '{split}:' in {path} at a folder that has them."
        )
    if bad := [f for f in images if not _is_image(f)]:
        raise ValueError(
            f"Dataset {path}: {len(bad)} {split} file(s) are not images (corrupt, missing or another kind of file), "
            f"e.g. {bad[0]}: replace them, or delete them with their label files."
        )


def _is_image(file):
    """Return True if an image reader of PIL recognizes the file's signature (or no reader could: HEIF without its
    plugin); False for a missing file or one no reader recognizes."""
    from PIL import Image

    Image.init()
    if file.suffix.lower() not in Image.registered_extensions():
        return True  # e.g. .heic, read by a plugin Ultralytics loads on demand
    try:
        with open(file, "rb") as f:
            prefix = f.read(16)
    except OSError:
        return False
    return any(accept and accept(prefix) for _, accept in Image.OPEN.values())
