"""When something has already gone wrong: every CLI refuses a start it cannot make in one line, with the fix, before it
writes anything (no run directory, no label cache, no other run's args.yaml touched); and what every run shows is true.

The project directory holds what a user has after a first run: a finished AdvAmd run, an interrupted stock Ultralytics
run, and copies of the tiny digits set with an empty val folder and with a broken image."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml
from helpers import results

pytestmark = pytest.mark.slow  # the project's first run trains
ROOT = Path(__file__).resolve().parents[1]
FINISHED = "runs/fin/weights/last.pt"


def cli(program: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the package's CLIs as a user does, from `cwd`, outside pytest (as from a shell)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return subprocess.run(
        [sys.executable, str(ROOT / program), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def tree(root: Path) -> dict:
    """Every file and folder under `root` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def dataset_copy(data: str, dest: Path) -> Path:
    """Copy a digits-det build (without label caches) to `dest`, pointing its YAML there; return the YAML."""
    shutil.copytree(Path(data).parent, dest, ignore=shutil.ignore_patterns("*.cache"))
    file = dest / Path(data).name
    cfg = yaml.safe_load(file.read_text())
    file.write_text(yaml.safe_dump({**cfg, "path": str(dest)}))
    return file


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_data):
    """A user's project: a finished AdvAmd run (trained by the CLI), an interrupted stock run, two broken datasets."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    root = tmp_path_factory.mktemp("project")
    r = cli(
        "train_advamd.py",
        "model=yolov8n.yaml",
        f"data={tiny_data}",
        "imgsz=64",
        "epochs=1",
        "batch=8",
        "abar_batches=1",
        f"project={root / 'runs'}",
        "name=fin",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr

    class Interrupt(Exception):
        pass

    def stop(trainer):
        raise Interrupt

    stock = DetectionTrainer(
        overrides={
            "model": "yolov8n.yaml",
            "data": tiny_data,
            "imgsz": 64,
            "epochs": 2,
            "batch": 8,
            "workers": 0,
            "plots": False,
            "val": False,
            "project": str(root / "runs"),
            "name": "stock",
        }
    )
    stock.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(Interrupt):
        stock.train()
    empty = dataset_copy(tiny_data, root / "data" / "empty-val")
    for f in (empty.parent / "images" / "val").iterdir():
        f.unlink()
    broken = dataset_copy(tiny_data, root / "data" / "broken")
    next((broken.parent / "images" / "train").iterdir()).write_bytes(b"not an image\n")
    return root


def refused(project: Path, program: str, *args) -> str:
    """Run a CLI that must refuse to start; assert one line and exit code 2, no traceback, nothing written, the finished
    run's args.yaml byte for byte as it was; return the message."""
    before, record = tree(project), (project / "runs/fin/args.yaml").read_bytes()
    r = cli(program, *args, cwd=project)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stdout + r.stderr  # no warning before it either
    assert tree(project) == before
    assert (project / "runs/fin/args.yaml").read_bytes() == record
    return r.stderr.removeprefix(f"{program}: error: ").strip()


def test_resuming_a_finished_run_says_it_is_finished(project):
    message = refused(project, "train_advamd.py", f"resume={FINISHED}")
    assert message == f"training of {FINISHED} is finished: nothing to resume (use model={FINISHED} to fine-tune it)"


def test_resuming_a_stock_ultralytics_checkpoint_says_it_is_not_an_advamd_one(project):
    message = refused(project, "train_advamd.py", "resume=runs/stock/weights/last.pt")
    assert message.startswith("runs/stock/weights/last.pt is not an AdvAmd checkpoint")
    assert message.endswith("use model=runs/stock/weights/last.pt to fine-tune it")


def test_resuming_a_path_that_does_not_exist_does_not_resume_another_run(project):
    message = refused(project, "train_advamd.py", "resume=runs/gone/weights/last.pt")
    assert message.startswith("resume=runs/gone/weights/last.pt is not a checkpoint on disk: pass the last.pt")


@pytest.mark.parametrize("program", ["train_advamd.py", "val_advamd.py"])
def test_an_empty_val_folder_is_named_before_any_cache_or_run_directory(project, program):
    model = "model=yolov8n.yaml" if program == "train_advamd.py" else f"model={FINISHED}"
    message = refused(
        project,
        program,
        model,
        "data=data/empty-val/digits-det.yaml",
        "imgsz=64",
        f"project={project / 'runs'}",
        "name=fin",
        "exist_ok=True",
    )
    val = project / "data/empty-val/images/val"
    assert message.startswith(f"Dataset data/empty-val/digits-det.yaml: the val images {val} hold no image (")
    assert message.endswith(
        "put the val images there, or point 'val:' in data/empty-val/digits-det.yaml at a folder that has them."
    )


def test_a_broken_image_is_named_as_a_broken_file_not_a_missing_package(project):
    message = refused(
        project,
        "train_advamd.py",
        "data=data/broken/digits-det.yaml",
        "imgsz=64",
        f"project={project / 'runs'}",
        "name=fin",
        "exist_ok=True",
    )
    first = next((project / "data/broken/images/train").iterdir())
    assert message == (
        f"Dataset data/broken/digits-det.yaml: 1 train file(s) are not images (corrupt, missing or "
        f"another kind of file), e.g. {first}: replace them, or delete them with their label "
        "files."
    )


@pytest.mark.parametrize("program", ["train_advamd.py", "val_advamd.py"])
def test_a_missing_model_is_named_without_task_guessing_warnings(project, program):
    message = refused(project, program, "model=missing.pt")
    assert message.startswith("model=missing.pt is not on disk and yolo-advamd never downloads weights")


def test_an_unknown_export_format_lists_every_format_and_offers_no_cloud(project):
    message = refused(project, "export.py", "model=runs/fin/weights/best.pt", "format=bogus")
    assert message.startswith("format=bogus is not an export format: choose one of pt, state_dict, torchscript, onnx,")
    typo = refused(project, "export.py", "model=runs/fin/weights/best.pt", "format=onxx")
    assert "(did you mean format=onnx?)" in typo


def test_val_advamd_prints_its_table_once(project, tiny_data):
    r = cli(
        "val_advamd.py",
        "model=runs/fin/weights/best.pt",
        f"data={tiny_data}",
        "attacks=fgsm",
        "eps=0.01",
        "imgsz=64",
        f"project={project / 'val'}",
        cwd=project,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| model | attacked model | benign | fgsm eps=0.01 |") == 2  # the mAP50-95 and mAP50 tables


def test_vulnerability_png_keeps_its_titles_inside_the_image(project):
    image = cv2.imread(str(project / "runs/fin/vulnerability.png"), cv2.IMREAD_GRAYSCALE)
    frame = next(y for y, row in enumerate(image) if (row < 100).mean() > 0.2)  # the plots' top edges, under the titles
    titles = image[:frame]
    assert (titles < 100).sum() > 100  # the titles are there
    assert titles[:, :10].min() > 200 and titles[:, -10:].min() > 200  # and no text runs into the left or right edge


def test_results_csv_holds_only_measured_losses(project):
    row = results(project / "runs/fin")[0]
    assert {"train/box_loss", "train/med_loss", "train/adv_loss", "val/box_loss", "val/cls_loss"} <= set(row)
    assert not {"val/med_loss", "val/adv_loss"} & set(row)  # validation trains no view: they were always 0
    assert all(float(row[k]) > 0 for k in ("train/med_loss", "train/adv_loss", "val/box_loss"))
