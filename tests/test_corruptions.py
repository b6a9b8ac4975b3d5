"""Common corruptions (COCO-C protocol): the benchmark's functions, deterministic, cached sets, mPC and rPC per task."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import yolo_advamd.corruptions as corruptions
from yolo_advamd.corruptions import (
    corrupt_image,
    corrupted_sets,
    corruption_names,
    corruption_split,
    parse_corruptions,
    parse_severities,
)
from yolo_advamd.validate import validate_advamd

ROOT = Path(__file__).resolve().parents[1]
TWO = "gaussian_noise,fog"
SCORE = {"detect": "metrics/mAP50-95(B)", "segment": "metrics/mAP50-95(M)", "classify": "metrics/accuracy_top1"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh data cache for the corrupted sets."""
    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def scene(digits) -> np.ndarray:
    """A digits-det val scene (64 px), RGB."""
    file = sorted((Path(digits["data"]).parent / "images" / "val").glob("*.png"))[0]
    return np.ascontiguousarray(cv2.imread(str(file))[..., ::-1])


def test_the_benchmark_corruptions_are_named_as_in_coco_c():
    common = parse_corruptions("common")
    assert common == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    ]
    assert parse_corruptions("all") == common + ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert parse_corruptions("fog, Gaussian_noise,fog") == ["fog", "gaussian_noise"]
    assert parse_corruptions(None) == [] == parse_corruptions("none")
    assert parse_severities("5,1") == [5, 1] and parse_severities(3) == [3]


def test_the_fork_is_installed_alone_and_imports_without_pkg_resources():
    """imagecorruptions-imaug provides `imagecorruptions`; PyPI's original (broken on this stack) is not beside it."""
    from importlib.metadata import PackageNotFoundError, distribution

    code = "import sys, imagecorruptions; print('pkg_resources' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    assert distribution("imagecorruptions-imaug").version == "1.1.5"
    with pytest.raises(PackageNotFoundError):
        distribution("imagecorruptions")


@pytest.mark.parametrize("severity", [1, 5])
def test_each_corruption_changes_the_image_and_keeps_its_shape_and_dtype(digits, severity):
    image = scene(digits)
    for name in corruption_names("all"):
        out = corrupt_image(image, name, severity)
        assert out.shape == image.shape and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - image).mean() > 0.5, name


def test_a_corruption_depends_only_on_image_corruption_and_severity(digits):
    """Same inputs, same bytes, whatever the global generator's state; another image or severity, another draw."""
    image = scene(digits)
    for name in corruption_names("all"):
        np.random.seed(1)
        first = corrupt_image(image, name, 3)
        np.random.seed(2)
        assert np.array_equal(first, corrupt_image(image.copy(), name, 3)), name
    noise = [corrupt_image(im, "gaussian_noise", 3).astype(int) - im for im in (image, image[::-1].copy())]
    assert not np.array_equal(noise[0], noise[1][::-1])
    assert not np.array_equal(corrupt_image(image, "frost", 2), corrupt_image(image, "frost", 3))


def test_sets_are_built_once_in_yolo_layout_and_reused(digits, cache, monkeypatch):
    """Each set holds every val image (same names, PNG data) and its labels; a second call builds nothing."""
    split = corruption_split(str(digits["data"]), "detect")
    sets = corrupted_sets(split, ["fog", "gaussian_noise"], [1, 5])
    assert list(sets) == [("fog", 1), ("fog", 5), ("gaussian_noise", 1), ("gaussian_noise", 5)]
    source = Path(digits["data"]).parent
    for (name, severity), images in sets.items():
        files = sorted(images.glob("*.png"))
        assert [f.name for f in files] == [Path(f).name for f in split.images] and len(files) == 16
        for f in files:
            label = (source / "labels" / "val" / f.name).with_suffix(".txt")
            assert (images.parent / "labels" / label.name).read_text() == label.read_text()
            original = cv2.imread(str(source / "images" / "val" / f.name))
            expected = corrupt_image(np.ascontiguousarray(original[..., ::-1]), name, severity)[..., ::-1]
            assert np.array_equal(cv2.imread(str(f)), expected)  # lossless, and the same in the worker processes
    stamps = {f: f.stat().st_mtime_ns for images in sets.values() for f in images.iterdir()}
    monkeypatch.setattr(corruptions, "ProcessPoolExecutor", lambda *a, **k: pytest.fail("a set was built again"))
    assert corrupted_sets(split, ["fog", "gaussian_noise"], [1, 5]) == sets
    assert stamps == {f: f.stat().st_mtime_ns for images in sets.values() for f in images.iterdir()}
    assert not [p for p in split.cache.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_a_failed_build_leaves_no_set(digits, cache):
    """An image that cannot be read stops the build: no set and no temporary directory is left to be taken as done."""
    split = corruption_split(str(digits["data"]), "detect")
    bad = split.images[0].replace(".png", "-broken.png")
    Path(bad).write_bytes(b"not an image")
    try:
        with pytest.raises(ValueError, match="cannot read"):
            corrupted_sets(split._replace(images=[*split.images, bad]), ["fog"], [1])
    finally:
        os.remove(bad)
    assert not list(split.cache.iterdir())


def test_classification_sets_keep_the_class_folders(fitted_tasks, cache):
    d = fitted_tasks["classify"]
    split = corruption_split(str(d["data"]), "classify")
    images = corrupted_sets(split, ["contrast"], [2])[("contrast", 2)]
    originals = sorted(p.relative_to(Path(d["data"]) / "val") for p in (Path(d["data"]) / "val").rglob("*.png"))
    assert sorted(p.relative_to(images) for p in images.rglob("*.png")) == originals
    assert not (images.parent / "labels").exists()


def test_detector_validates_under_corruptions_through_the_cli_with_mpc_and_rpc(digits, cache, tmp_path):
    """`val_advamd.py corruptions=gaussian_noise,fog severities=1,5 attacks=fgsm baseline=...`: one table with the
    attack, mPC and rPC, their Δ; mPC is the mean of the per-corruption table and rPC = mPC / benign."""
    args = [
        f"model={digits['stock']}",
        f"data={digits['data']}",
        f"baseline={digits['amended']}",
        "imgsz=64",
        "attacks=fgsm",
        "eps=0.05",
        f"corruptions={TWO}",
        "severities=1,5",
        f"project={tmp_path}",
        "name=val",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "val_advamd.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    save_dir = tmp_path / "val"
    results = json.loads((save_dir / "results.json").read_text())
    row, key = results["rows"][0]["stats"], SCORE["detect"]
    sets = [f"{n} s{s}" for n in TWO.split(",") for s in (1, 5)]
    assert results["corruptions"]["columns"] == sets
    assert results["columns"] == ["benign", "fgsm eps=0.05", *sets, "mPC", "rPC"]
    assert row["mPC"][key] == pytest.approx(np.mean([row[c][key] for c in sets]))
    assert row["rPC"][key] == pytest.approx(row["mPC"][key] / row["benign"][key])
    assert row["gaussian_noise s5"][key] < row["gaussian_noise s1"][key] <= row["benign"][key] + 0.05
    assert results["delta"]["mPC"][key] == 0  # the amended checkpoint is the same detector through its main BN
    table = (save_dir / "results.md").read_text()
    assert "| model | attacked model | benign | fgsm eps=0.05 | mPC | rPC |" in table and table in r.stdout
    grid = table.split("**mAP50-95 (%) per corruption × severity: ")[1].split("\n\n")[1].splitlines()
    assert grid[0] == "| corruption | s1 | s5 | mean |"
    means = [float(line.split("|")[-2]) for line in grid[2:]]
    printed_mpc = next(line for line in table.splitlines() if line.startswith(f"| {digits['stock']} |"))
    assert float(printed_mpc.split("|")[-3]) == pytest.approx(np.mean(means), abs=0.01)
    with open(save_dir / "results.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["metric", "model", "attacked model", *results["columns"]]
    assert cv2.imread(str(save_dir / "corruptions.png")).shape[0] > 100


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_segmenter_and_classifier_validate_under_two_corruptions_and_two_severities(
    fitted_tasks, cache, tmp_path, task
):
    """Mask mAP50-95 for a segmentation model, top-1 for a classifier, per corruption × severity, and their mPC."""
    d = fitted_tasks[task]
    out = validate_advamd(
        str(d["ckpt"]),
        str(d["data"]),
        attacks="",
        corruptions=TWO,
        severities="2,4",
        imgsz=d["imgsz"],
        project=str(tmp_path),
        name=task,
    )
    stats, key = out["rows"][0]["stats"], SCORE[task]
    sets = [f"{n} s{s}" for n in TWO.split(",") for s in (2, 4)]
    assert stats["benign"][key] > 0.5 and all(0 <= stats[c][key] <= 1 for c in sets)
    assert stats["gaussian_noise s4"][key] < stats["benign"][key]
    assert stats["mPC"][key] == pytest.approx(np.mean([stats[c][key] for c in sets]))
    metric = "mask mAP50-95" if task == "segment" else "top1"
    assert f"**{metric} (%) per corruption × severity: {d['ckpt']}**" in out["markdown"]
    assert (Path(out["save_dir"]) / "corruptions.png").is_file()


def test_mpc_averages_the_common_corruptions_and_leaves_held_out_ones_out():
    """As in the benchmark: the held-out corruptions are reported, not averaged into mPC; rPC = mPC / P."""
    stats = {
        "benign": {"s": 0.8},
        "fog s1": {"s": 0.6},
        "fog s2": {"s": 0.4},
        "spatter s1": {"s": 0.0},
        "spatter s2": {"s": 0.0},
    }
    out = corruptions.robustness(stats, ["fog", "spatter"], [1, 2])
    assert out == {"mPC": {"s": pytest.approx(0.5)}, "rPC": {"s": pytest.approx(0.625)}}
    assert corruptions.robustness(stats, ["spatter"], [1, 2])["mPC"] == {"s": 0.0}  # only held-out ones: theirs
    assert "held-out spatter not included" in corruptions.mpc_note(["fog", "spatter"], [1, 2])


def bad_data(tmp_path: Path, digits, case: str) -> Path:
    """A copy of the digits data YAML whose test folder holds no image (`no-test`; an empty val split is refused for
    every validation, `data.resolve_dataset`) or whose val folder holds one 20 px image (`small`)."""
    cfg = yaml.safe_load(Path(digits["data"]).read_text())
    split = "test" if case == "no-test" else "val"
    (tmp_path / split / "images").mkdir(parents=True)
    if case == "small":
        cv2.imwrite(str(tmp_path / "val" / "images" / "a.png"), np.full((20, 20, 3), 128, np.uint8))
    cfg[split] = str(tmp_path / split / "images")
    (tmp_path / f"{case}.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / f"{case}.yaml"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"corruptions": "fogg"},
            r"corruptions=fogg names 'fogg', not a corruption: use common .* names among "
            r"gaussian_noise, shot_noise",
        ),
        ({"corruptions": "fog", "severities": "0,1"}, r"severities=0,1 has 0: severities are whole numbers 1 to 5"),
        ({"corruptions": "fog", "severities": 6}, r"severities=6 has 6"),
        (
            {"corruptions": "fog", "data": "no-test", "split": "test"},
            r"corruptions= corrupts the test images and "
            r"data=.* has none",
        ),
        (
            {"corruptions": "fog", "data": "small"},
            r"corruptions= needs images of at least 32 px .*/a.png is 20x20: use larger",
        ),
    ],
)
def test_bad_corruption_settings_are_refused_before_any_work(digits, cache, tmp_path, kwargs, match):
    if kwargs.get("data") in {"no-test", "small"}:
        kwargs["data"] = str(bad_data(tmp_path, digits, kwargs["data"]))
    kwargs = {"data": str(digits["data"]), "attacks": "", "imgsz": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        validate_advamd(digits["stock"], project=str(tmp_path / "runs"), name="bad", **kwargs)
    assert not (tmp_path / "runs").exists() and not cache.exists()


def test_cli_refuses_an_unknown_corruption_in_one_line(digits, tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "val_advamd.py"), f"model={digits['stock']}", "corruptions=fogg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("val_advamd.py: error: corruptions=fogg names 'fogg', not a corruption")
    assert not (tmp_path / "runs").exists()
