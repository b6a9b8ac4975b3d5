"""Datasets: the embedded digits-det builder and `resolve_dataset`, which turns a `data=` argument into a ready YAML.

`resolve_dataset` is the one gate between a user's `data=` and Ultralytics: it builds digits-det when asked for it and
refuses, with the expected location and how to get the images, any dataset whose images are not on disk, before
Ultralytics' `check_det_dataset` could try to download it.
"""

from pathlib import Path

import yaml

from yolo_advamd.data.digits import NAME as DIGITS_NAME
from yolo_advamd.data.digits import build_digits_det, cache_dir, dataset_dir

__all__ = ("DIGITS_BUILDER_KEYS", "build_digits_det", "cache_dir", "dataset_dir", "resolve_dataset")

DIGITS_BUILDER_KEYS = {"seed": 0, "n_train": 2000, "n_val": 500, "imgsz": 160}  # `builder: digits-det` YAML keys


def resolve_dataset(data):
    """Return the path of an Ultralytics-ready data YAML for `data`, building digits-det when it names it.

    Args:
        data (str | Path): A data YAML path. A YAML with `builder: digits-det` (like `data/digits-det.yaml`), or
            the bare name `digits-det` / `digits-det.yaml`, is built on first use into the cache
            (`$YOLO_ADVAMD_DATA`) and the build's own YAML (absolute `path`) is returned. Any other YAML is returned
            as given once its `train` and `val` images are found on disk; nothing is ever downloaded.

    Returns:
        (str): Path of a data YAML that `ultralytics.data.utils.check_det_dataset` accepts offline.

    Raises:
        FileNotFoundError: If the YAML does not exist or its images are not on disk; the message says where they are
            expected and how to get them.
        ValueError: If a digits-det YAML has an unknown builder key.
    """
    data = str(data)
    if "://" in data:
        raise FileNotFoundError(
            f"data={data} is a URL; yolo-advamd runs offline and downloads nothing. Download the dataset yourself and "
            f"pass its local data YAML, or use the embedded default data=data/digits-det.yaml."
        )
    path = Path(data)
    if not path.is_file():
        if path.stem == DIGITS_NAME and path.suffix in {"", ".yaml", ".yml"}:
            return str(build_digits_det(**DIGITS_BUILDER_KEYS) / f"{DIGITS_NAME}.yaml")
        from ultralytics.utils.checks import check_file

        found = check_file(data, hard=False) if path.suffix in {".yaml", ".yml"} else ""  # Ultralytics' bundled YAMLs
        if not found:
            raise FileNotFoundError(
                f"data={data} does not exist. Pass the path of a data YAML (e.g. data=data/coco.yaml), or use the "
                f"embedded default data=data/digits-det.yaml, which is built offline on first use."
            )
        path = Path(found)
    cfg = yaml.safe_load(path.read_text()) or {}
    if cfg.get("builder") == DIGITS_NAME:
        return str(_build_from_yaml(path, cfg) / f"{DIGITS_NAME}.yaml")
    _check_images(path, cfg)
    return str(path)


def _build_from_yaml(path, cfg):
    """Build the digits-det dataset described by a `builder: digits-det` YAML and return its directory."""
    unknown = set(cfg) - set(DIGITS_BUILDER_KEYS) - {"builder"}
    if unknown:
        raise ValueError(
            f"{path} has unknown digits-det key(s) {sorted(unknown)}: valid keys are builder and "
            f"{', '.join(DIGITS_BUILDER_KEYS)}, e.g. n_train: 2000"
        )
    return build_digits_det(**{k: cfg.get(k, v) for k, v in DIGITS_BUILDER_KEYS.items()})


def _dataset_root(path, cfg):
    """Resolve a data YAML's root directory the way Ultralytics' `check_det_dataset` does (without downloading)."""
    from ultralytics.utils import DATASETS_DIR

    root = Path(cfg.get("path") or path.parent)
    if not root.exists() and not root.is_absolute():
        root = (DATASETS_DIR / root).resolve()
    return root


def _check_images(path, cfg):
    """Raise FileNotFoundError, saying where and how, if a data YAML's train or val images are not on disk."""
    root = _dataset_root(path, cfg)
    missing = []
    for split in ("train", "val"):
        entries = cfg.get(split) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            x = (root / entry).resolve()
            if not x.exists() and str(entry).startswith("../"):
                x = (root / entry[3:]).resolve()  # Ultralytics' fallback for '../' entries
            if not x.exists():
                missing.append(f"{split}: {x}")
    if missing:
        how = cfg.get("how_to_get") or (
            f"Put the images there (YOLO labels in a 'labels' directory beside 'images'), or edit 'path:' in {path}."
        )
        raise FileNotFoundError(
            f"Dataset {path} is not on disk: missing {'; '.join(missing)} (dataset root {root}). "
            f"yolo-advamd downloads nothing. {how.strip()} "
            f"To run offline without it, use the embedded default data=data/digits-det.yaml."
        )
