"""AdvAmdTrainer: three views through Ultralytics' own loop, stock-exact vanilla, checkpoints, resume and bad input."""

import csv
from pathlib import Path

import pytest
import torch

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.patches import torch_load

from yolo_advamd.cfg import ADVAMD_KEYS
from yolo_advamd.data import resolve_dataset
from yolo_advamd.nn.dual_bn import DualBatchNorm2d
from yolo_advamd.trainer import AdvAmdTrainer


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 32/16-scene, 64 px digits-det build (real handwritten digits)."""
    root = tmp_path_factory.mktemp("data")
    yaml = root / "tiny.yaml"
    yaml.write_text("builder: digits-det\nseed: 3\nn_train: 32\nn_val: 16\nimgsz: 64\n")
    import os

    old = os.environ.get("YOLO_ADVAMD_DATA")
    os.environ["YOLO_ADVAMD_DATA"] = str(root / "cache")
    try:
        return resolve_dataset(str(yaml))
    finally:
        if old is None:
            os.environ.pop("YOLO_ADVAMD_DATA")
        else:
            os.environ["YOLO_ADVAMD_DATA"] = old


def tiny(tmp_path, data, name, **kw):
    """Settings for a seconds-long run: yolov8n at 64 px, 4 batches of 8, SGD with a fixed schedule."""
    return {
        "model": "yolov8n.yaml",
        "data": data,
        "epochs": 1,
        "imgsz": 64,
        "batch": 8,
        "workers": 0,
        "optimizer": "SGD",
        "lr0": 0.01,
        "warmup_epochs": 0,
        "close_mosaic": 0,
        "deterministic": True,
        "seed": 0,
        "plots": False,
        "val": True,
        "abar_batches": 2,
        "project": str(tmp_path),
        "name": name,
        "exist_ok": True,
        "verbose": False,
        **kw,
    }


def results(run: Path) -> list[dict]:
    """Rows of a run's results.csv."""
    with open(run / "results.csv") as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def ema_state(path: Path) -> dict:
    """The float state dict of a checkpoint's EMA model."""
    ckpt = torch_load(path, map_location="cpu")
    return {k: v.float() for k, v in (ckpt["ema"] or ckpt["model"]).state_dict().items()}


@pytest.mark.slow
def test_vanilla_trains_exactly_like_stock(tmp_path, tiny_data):
    stock_args = {k: v for k, v in tiny(tmp_path, tiny_data, "stock").items() if k not in ADVAMD_KEYS}
    stock = DetectionTrainer(overrides=stock_args)
    stock.train()
    ours = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "vanilla", method="vanilla"))
    ours.train()
    a, b = results(stock.save_dir)[0], results(ours.save_dir)[0]
    for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss"):
        assert a[k] == b[k], k
    sa, sb = ema_state(stock.last), ema_state(ours.last)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_advamd_epoch_logs_three_views_and_checkpoints_state(tmp_path, tiny_data):
    trainer = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "amd", plots=True, attack="fgsm", eps=0.03))
    trainer.train()
    row = results(trainer.save_dir)[0]
    for k in ("train/box_loss", "train/med_loss", "train/adv_loss"):
        assert float(row[k]) > 0, k
    assert list(trainer.save_dir.glob("train_views*.jpg")), "no benign/mediate/adversarial picture"
    assert trainer.stage.reuses_gradient  # FGSM on the current model: the loop's own pass is the adversarial view
    aux = [m.aux.weight for m in trainer.model.modules() if isinstance(m, DualBatchNorm2d)]
    assert any((w != 1).any() for w in aux), "the adversarial view never reached the auxiliary BN"
    ckpt = torch_load(trainer.last, map_location="cpu")
    model = ckpt["ema"] or ckpt["model"]  # a finished run holds the EMA under "model"
    assert any(isinstance(m, DualBatchNorm2d) for m in model.modules())
    state = model.advamd_state
    assert state["abar"].shape == (10,) and torch.isfinite(state["abar"]).all()
    assert state["target"] is None  # from a YAML the current model is attacked
    args = model.args if isinstance(model.args, dict) else vars(model.args)  # strip_optimizer trims train_args
    assert args["attack_model"] == "current" and args["phi"] == 0.7
    for v in model.state_dict().values():
        assert torch.isfinite(v.float()).all()


@pytest.mark.slow
def test_finetune_from_checkpoint_attacks_frozen_target_and_resume_restores_it(tmp_path, tiny_data):
    base = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "base", method="vanilla"))
    base.train()
    kw = tiny(tmp_path, tiny_data, "ft", model=str(base.last), epochs=2, attack="pgd", steps=2, eps=0.02, abar_update="none")

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(trainer):
        raise Interrupt

    first = AdvAmdTrainer(overrides=kw)
    first.add_callback("on_fit_epoch_end", stop_after_first_epoch)
    with pytest.raises(Interrupt):
        first.train()
    assert first.args.attack_model == "target"
    saved = torch_load(first.last, map_location="cpu")["ema"]
    target_at_start = saved.advamd_state["target"]
    base_weights = ema_state(base.last)
    for k, v in target_at_start.items():  # M_T is the starting model, not the one being trained
        assert torch.equal(v.half().float(), base_weights[k]), k

    resumed = AdvAmdTrainer(overrides={"resume": str(first.last)})
    resumed.train()
    assert resumed.start_epoch == 1
    assert (resumed.args.attack, resumed.args.steps, resumed.args.eps) == ("pgd", 2, 0.02)
    for k, v in resumed.stage.target.state_dict().items():
        assert torch.equal(v, target_at_start[k]), k
    assert torch.equal(resumed.abar.cpu(), saved.advamd_state["abar"])  # restored, not recalibrated
    aux = [m.aux for m in resumed.model.modules() if isinstance(m, DualBatchNorm2d)]
    assert aux, "the resumed model lost its auxiliary BN"
    assert len(results(resumed.save_dir)) == 2


def test_bad_settings_fail_before_any_directory_is_made(tmp_path, tiny_data):
    with pytest.raises(ValueError, match=r"eps=1\.5 is outside"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "bad", eps=1.5))
    with pytest.raises(SyntaxError, match="'beta4' is not a valid argument"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "bad", beta4=1.0))
    assert not (tmp_path / "bad").exists()


def test_python_api_builds_the_embedded_data_and_never_downloads_weights(tmp_path, monkeypatch):
    """Like the CLIs: `data` may name the digits-det builder YAML (built on first use), a missing .pt fails at once."""
    monkeypatch.setenv("YOLO_ADVAMD_DATA", str(tmp_path / "cache"))
    builder = tmp_path / "small.yaml"
    builder.write_text("builder: digits-det\nseed: 5\nn_train: 8\nn_val: 4\nimgsz: 64\n")
    trainer = AdvAmdTrainer(overrides=tiny(tmp_path, str(builder), "py"))
    assert trainer.data["nc"] == 10 and Path(trainer.args.data).is_relative_to(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="never downloads weights"):
        AdvAmdTrainer(overrides=tiny(tmp_path, str(builder), "missing", model="yolov8s.pt"))
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])  # the NaN view is the loop's own pass / one trained before it
def test_nan_view_skips_the_step_and_never_reaches_the_weights(tmp_path, tiny_data, monkeypatch, caplog, attack):
    from yolo_advamd.stage import AttackStage

    stage_call = AttackStage.__call__
    calls = []

    def poisoned(self, batch, model=None, **kwargs):
        out = stage_call(self, batch, model, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # one training batch (after 2 calibration batches and 1 clean step)
            out["img_adv"] = torch.full_like(out["img_adv"], float("nan"))
        return out

    monkeypatch.setattr(AttackStage, "__call__", poisoned)
    kw = {"attack": attack, "steps": 1} if attack == "pgd" else {}
    trainer = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "nan", nbs=8, **kw))  # nbs=batch: a step per batch
    trainer.train()
    assert trainer.stage.reuses_gradient == (attack == "fgsm")
    assert "non-finite AdvAmd loss {'adv': nan}" in caplog.text
    assert caplog.text.count("optimizer step skipped") == 1  # the BN statistics were not poisoned for later steps
    for v in trainer.model.state_dict().values():
        assert torch.isfinite(v.float()).all()
    for v in ema_state(trainer.last).values():
        assert torch.isfinite(v).all()
