"""MagNet (`method=magnet`, `val_advamd.py defense=`): the threshold rule, rejected images scored as missed, the
reformer, training per task through the CLI, validation through the defense, refusals and resume."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import results, val_batch
from ultralytics.utils.torch_utils import torch_load

from yolo_advamd.checkpoint import load_defense
from yolo_advamd.cli import train
from yolo_advamd.magnet import MagNetMixin, benign_errors, fit_threshold
from yolo_advamd.validate import validate_advamd
from yolo_advamd.validators import REJECTED, VALIDATORS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["epochs=1", "batch=8", "workers=0", "plots=False", "hyp=" + str(ROOT / "hyps" / "magnet.yaml")]


def run(program: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the repository's CLIs in `cwd`."""
    return subprocess.run(
        [sys.executable, str(ROOT / program), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


STOCK_BYTES = {}  # the digits detector's checkpoint before MagNet trained beside it


@pytest.fixture(scope="module")
def magnet(digits, tmp_path_factory) -> Path:
    """A MagNet autoencoder trained for the digits detector by `train_advamd.py method=magnet` (two epochs)."""
    root = tmp_path_factory.mktemp("magnet")
    STOCK_BYTES["before"] = Path(digits["stock"]).read_bytes()
    r = run(
        "train_advamd.py",
        "method=magnet",
        f"model={digits['stock']}",
        f"data={digits['data']}",
        *FAST,
        "epochs=2",
        f"project={root}",
        "name=det",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "det" / "weights" / "best.pt"


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
@pytest.mark.parametrize("fpr", [0.001, 0.005, 0.01, 0.3])
def test_threshold_rejects_at_most_fpr_of_the_calibration_set(n, fpr):
    errors = torch.rand(n, generator=torch.Generator().manual_seed(n))
    errors[: n // 3] = errors[0]  # ties
    threshold = fit_threshold(errors, fpr)
    assert (errors > threshold).float().mean() <= fpr
    assert (errors >= threshold).any()  # the threshold is one of the errors: no looser one rejects as few
    distinct = torch.rand(n, generator=torch.Generator().manual_seed(0))
    assert int((distinct > fit_threshold(distinct, fpr)).sum()) == int(fpr * n)  # exactly floor(fpr * n) rejected


def test_training_leaves_the_model_untouched_and_the_checkpoint_holds_the_threshold(digits, magnet):
    ckpt = torch_load(magnet, map_location="cpu")
    defense = load_defense(magnet)
    assert (defense.task, defense.imgsz, defense.fit_for, defense.fpr) == ("detect", 64, str(digits["stock"]), 0.005)
    assert ckpt["train_args"]["model"] == str(digits["stock"]) and ckpt["epoch"] == -1
    assert Path(digits["stock"]).read_bytes() == STOCK_BYTES["before"]  # the model is not trained nor rewritten
    rows = results(magnet.parents[1])
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[-1]["train/recon_loss"]) > 0
    assert {"val/recon_loss", "metrics/threshold", "metrics/rejected"} <= set(rows[0])
    # the threshold rule on the calibration set: benign val, letterboxed as val_advamd.py loads it
    errors = benign_errors(defense, [val_batch(digits["data"], imgsz=defense.imgsz)], torch.device("cpu"))
    assert len(errors) == 16 and (errors > defense.threshold).float().mean() <= defense.fpr


def test_the_reformer_gives_the_model_the_reconstruction(digits, magnet):
    defense = load_defense(magnet)
    batch = val_batch(digits["data"])
    validator = VALIDATORS["detect"](args={"data": str(digits["data"]), "imgsz": 64}, defense=defense)
    validator.device = torch.device("cpu")
    seen = validator.preprocess({**batch, "img": (batch["img"] * 255).round().byte()})
    clean = (batch["img"] * 255).round() / 255
    assert torch.allclose(seen["img"], defense(clean))
    assert torch.equal(seen["rejected"], defense.errors(clean) > defense.threshold)


class Rejects(torch.nn.Module):
    """A defense with the identity as reformer whose detector rejects images by their position in the batch."""

    def __init__(self, every: int, threshold: float = 0.5):
        super().__init__()
        self.every, self.threshold, self.imgsz = every, threshold, None

    def forward(self, x):
        return x

    def screen(self, x):
        return x, (torch.arange(len(x)) % self.every == 0).float()


@pytest.mark.parametrize("task", ["detect", "classify"])
def test_a_rejected_image_scores_as_missed(digits, fitted_tasks, task, tmp_path):
    model, data = (
        (digits["stock"], digits["data"])
        if task == "detect"
        else (fitted_tasks[task]["ckpt"], fitted_tasks[task]["data"])
    )
    score = "metrics/mAP50(B)" if task == "detect" else "metrics/accuracy_top1"

    bare = validate_advamd(model, data, attacks="", project=str(tmp_path), batch=32)["rows"][0]["stats"]["benign"]
    assert bare[score] > 0.5
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("yolo_advamd.validate.check_defense", lambda *a: Rejects(every=1))  # every image rejected
        everything = validate_advamd(model, data, attacks="", project=str(tmp_path), batch=32, defense="x.pt")
        mp.setattr("yolo_advamd.validate.check_defense", lambda *a: Rejects(every=1, threshold=2))  # none
        nothing = validate_advamd(model, data, attacks="", project=str(tmp_path), batch=32, defense="x.pt")
    everything, nothing = (r["rows"][0]["stats"]["benign"] for r in (everything, nothing))
    assert everything[REJECTED] == 1.0 and everything[score] == 0.0  # all objects missed, every class wrong
    assert nothing[REJECTED] == 0.0 and nothing[score] == pytest.approx(bare[score])
    if task == "classify":
        assert everything["metrics/accuracy_top5"] == 0.0


def test_each_task_trains_magnet_for_an_epoch_via_the_cli(fitted_tasks, tmp_path):
    for task, settings in (("segment", []), ("classify", ["magnet_p=1", "magnet_noise=0.05", "magnet_fpr=0.1"])):
        d = fitted_tasks[task]
        r = run(
            "train_advamd.py", "method=magnet", f"model={d['ckpt']}", f"data={d['data']}", *FAST, *settings,
            f"project={tmp_path}", f"name={task}", cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        defense = load_defense(tmp_path / task / "weights" / "best.pt")
        assert (defense.task, defense.imgsz) == (task, d["imgsz"]) and defense.threshold > 0
        assert len(results(tmp_path / task)) == 1
        if settings:  # the settings reach the autoencoder: its noise, its error's exponent, its false-rejection rate
            assert (defense.p, defense.noise, defense.fpr) == (1, 0.05, 0.1)
            x = torch.rand(2, 3, 32, 32)
            assert torch.allclose(defense.errors(x), (x - defense(x)).abs().flatten(1).mean(1))


def test_val_cli_through_the_defense_benign_attacked_and_adaptive(digits, magnet, tmp_path):
    common = [f"model={digits['stock']}", f"defense={magnet}", f"data={digits['data']}", "attacks=fgsm", "eps=0.1"]
    r = run("val_advamd.py", *common, f"baseline={digits['stock']}", f"project={tmp_path}", "name=paper", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "**rejected by the defense (%)**" in r.stdout
    assert f"| {digits['stock']} + MagNet | {digits['stock']} (white-box) |" in r.stdout
    a = run("val_advamd.py", *common, "defense_adaptive=True", f"project={tmp_path}", "name=adaptive", cwd=tmp_path)
    assert a.returncode == 0, a.stderr[-2000:]
    assert f"| {digits['stock']} + MagNet | {digits['stock']} (white-box) through the reformer |" in a.stdout
    paper, adaptive = (results_json(tmp_path / n) for n in ("paper", "adaptive"))
    assert paper["rows"][0]["stats"]["benign"] == adaptive["rows"][0]["stats"]["benign"]  # no attack: same images
    assert REJECTED not in paper["rows"][1]["stats"]["benign"]  # the baseline is scored bare
    for stats in (paper["rows"][0]["stats"], adaptive["rows"][0]["stats"]):
        assert 0 <= stats["fgsm eps=0.1"][REJECTED] <= 1
    assert paper["rows"][0]["stats"]["fgsm eps=0.1"] != adaptive["rows"][0]["stats"]["fgsm eps=0.1"]


def results_json(run_dir: Path) -> dict:
    """A validation run's results.json."""
    import json

    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize(
    "program, args, message",
    [
        ("train_advamd.py", ["method=magnet", "magnet_fpr=0"], "magnet_fpr=0 must be in (0, 1)"),
        ("train_advamd.py", ["method=magnet", "magnet_fpr=1.5"], "magnet_fpr=1.5 must be in (0, 1)"),
        (
            "train_advamd.py",
            ["method=magnet", "model=yolov8n.yaml"],
            "method=magnet trains a defense for a trained model, the starting checkpoint, and model=yolov8n.yaml "
            "has none",
        ),
        ("val_advamd.py", ["defense_adaptive=True"], "defense_adaptive=True attacks through MagNet's reformer"),
        ("val_advamd.py", ["defense=STOCK"], "not a finished MagNet run's autoencoder"),
        ("val_advamd.py", ["defense=missing.pt"], "defense=missing.pt is not on disk"),
        ("val_advamd.py", ["defense=MAGNET", "imgsz=128"], "imgsz=128 differs from imgsz=64"),
    ],
)
def test_bad_magnet_input_is_refused_in_one_line_and_writes_nothing(digits, magnet, tmp_path, program, args, message):
    args = [a.replace("STOCK", str(digits["stock"])).replace("MAGNET", str(magnet)) for a in args]
    model = [f"model={digits['stock']}"] if not any(a.startswith("model=") for a in args) else []
    r = run(program, *model, *args, f"data={digits['data']}", f"project={tmp_path / 'runs'}", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_continues_the_autoencoders_training(digits, tmp_path):
    class Interrupt(Exception):
        pass

    def stop(trainer):
        raise Interrupt

    settings = {"method": "magnet", "model": str(digits["stock"]), "data": str(digits["data"]), "epochs": 2}
    settings |= {"batch": 8, "workers": 0, "plots": False, "project": str(tmp_path), "name": "r", "exist_ok": True}
    from yolo_advamd.cfg import resolve_settings
    from yolo_advamd.trainer import advamd_trainer

    first = advamd_trainer(resolve_settings(settings))
    assert isinstance(first, MagNetMixin)
    first.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(Interrupt):
        first.train()
    interrupted = torch_load(first.last, map_location="cpu")["ema"].state_dict()
    resumed = train({"resume": str(first.last)})
    assert resumed.start_epoch == 1 and len(results(resumed.save_dir)) == 2
    assert any(not torch.equal(v, interrupted[k].float()) for k, v in resumed.ema.ema.state_dict().items())
    assert load_defense(resumed.best).threshold is not None


def test_export_writes_the_autoencoder_to_onnx_beside_the_model_with_the_same_outputs(digits, magnet, tmp_path):
    import numpy as np
    import onnxruntime as ort

    model = tmp_path / "best.pt"
    model.write_bytes(Path(digits["stock"]).read_bytes())
    r = run("export.py", f"model={model}", f"defense={magnet}", "format=onnx", "imgsz=64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "best.onnx").is_file()
    session = ort.InferenceSession(str(tmp_path / "best_magnet.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    defense = load_defense(magnet)
    assert float(meta["threshold"]) == defense.threshold and meta["imgsz"] == "64"
    for size in (64, 96):  # batch and image size are dynamic
        x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))
        reconstruction, error = session.run(None, {"images": x.numpy()})
        np.testing.assert_allclose(reconstruction, defense(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(error, defense.errors(x).numpy(), rtol=1e-4, atol=1e-7)
    refused = run("export.py", f"model={model}", f"defense={magnet}", "format=pt", cwd=tmp_path)
    assert refused.returncode == 2 and "defense= is exported to ONNX: use format=onnx" in refused.stderr


def gather_worker(rank: int, init_file: str, out: dict) -> None:
    """Worker: a MagNet validator on rank `rank` with that rank's share of the errors; rank 0 returns its stats."""
    import torch.distributed as dist

    from yolo_advamd import magnet

    magnet.RANK = rank  # as Ultralytics reads it from torchrun's environment at import
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    validator = magnet.MagNetValidator(args={"data": "x.yaml"}, fpr=0.25)
    share = torch.arange(4.0) + 4 * rank  # rank 0: 0-3, rank 1: 4-7
    validator.errors, validator.squared = [share], [share / 10]
    validator.gather_stats()
    if rank == 0:
        out.update(validator.get_stats())
    dist.barrier()  # both ranks leave together: a rank torn down while the other still ran aborted (SIGABRT) once
    dist.destroy_process_group()


def test_under_ddp_the_threshold_is_set_on_every_ranks_errors(tmp_path):
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(gather_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    assert out["metrics/threshold"] == 5.0  # two of the eight errors, 6 and 7, may be rejected: not 1 of rank 0's four
    assert out["metrics/rejected"] == 0.25 and out["fitness"] == pytest.approx(-0.35)
