"""AdvAmdTrainer: three views through Ultralytics' own loop, stock-exact vanilla, checkpoints, resume and bad input."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import results, tiny
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.patches import torch_load

from yolo_advamd.cfg import ADVAMD_KEYS
from yolo_advamd.cli import train
from yolo_advamd.nn.dual_bn import DualBatchNorm2d
from yolo_advamd.trainer import AdvAmdTrainer
from yolo_advamd.vulnerability import Vulnerability


def ema_state(path: Path) -> dict:
    """The float state dict of a checkpoint's EMA model."""
    ckpt = torch_load(path, map_location="cpu")
    return {k: v.float() for k, v in (ckpt["ema"] or ckpt["model"]).state_dict().items()}


def test_each_abar_update_uses_only_the_flips_counted_since_the_last_one(caplog):
    args = SimpleNamespace(abar_norm="none")
    trainer = SimpleNamespace(vulnerability=Vulnerability(3), abar=None, device="cpu", args=args)
    trainer.log_vulnerability = lambda: None
    flips, none = Vulnerability(3), Vulnerability(3)
    labels = torch.tensor([0, 0, 1, 2])
    flips.update(labels, labels, torch.tensor([1, 0, 1, 2]))  # the calibration: one object of class 0 flipped to 1
    none.update(labels, labels, labels)  # the epoch: nothing flips
    trainer.vulnerability.update(labels, labels, torch.tensor([1, 0, 1, 2]))
    AdvAmdTrainer.update_abar(trainer)
    assert torch.equal(trainer.abar, flips.abar()) and trainer.vulnerability.counts.sum() == 0
    assert "A-bar from 4 benign-correct objects (1 flipped by the attack), 3/3 classes measured" in caplog.text
    trainer.vulnerability.update(labels, labels, labels)
    AdvAmdTrainer.update_abar(trainer)
    assert torch.equal(trainer.abar, none.abar())  # not the calibration's flips mixed in
    calibrated = trainer.abar
    AdvAmdTrainer.update_abar(trainer)  # an epoch that counted no object keeps Ā
    assert trainer.abar is calibrated


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
    kw = tiny(
        tmp_path, tiny_data, "ft", model=str(base.last), epochs=2, attack="pgd", steps=2, eps=0.02, abar_update="none"
    )

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

    ckpt = torch_load(first.last, map_location="cpu")  # as written before attack_labels existed
    for key in ("attack_labels", "attack_conf"):
        del ckpt["train_args"][key]
    torch.save(ckpt, first.last)
    resumed = train({"resume": str(first.last)})  # as `python train_advamd.py resume=.../last.pt` does
    assert resumed.start_epoch == 1 and resumed.args.data == first.args.data  # not the embedded default dataset
    assert (resumed.args.attack_labels, resumed.args.attack_conf) == ("gt", 0.25)  # a newer setting at its default
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


@pytest.mark.slow
def test_tensorboard_on_logs_views_vulnerability_and_view_losses(tmp_path):
    """`yolo settings tensorboard=True` (a private settings directory): AdvAmd trains and its event file holds the view
    grid, the Ā figure and the mediate and adversarial losses."""
    import os
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # Ultralytics mutes TensorBoard in tests
    env.update(
        YOLO_CONFIG_DIR=str(tmp_path / "config"), YOLO_ADVAMD_DATA=str(tmp_path / "cache"), YOLO_ADVAMD_THREADS="1"
    )
    data = tmp_path / "tiny.yaml"
    data.write_text("builder: digits-det\nseed: 3\nn_train: 16\nn_val: 8\nimgsz: 64\n")
    on = "import yolo_advamd; from ultralytics import settings; settings.update(tensorboard=True)"
    subprocess.run([sys.executable, "-c", on], env=env, check=True, timeout=120)
    run = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "train_advamd.py"),
            f"data={data}",
            "model=yolov8n.yaml",
            "epochs=1",
            "imgsz=64",
            "batch=8",
            "workers=0",
            "abar_batches=1",
            "plots=True",
            f"project={tmp_path}",
            "name=tb",
            "exist_ok=True",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"advamd/views", "advamd/vulnerability"} <= set(events.Tags()["images"])
    assert {"train/med_loss", "train/adv_loss"} <= set(events.Tags()["scalars"])


def test_compile_with_the_auxiliary_bn_is_refused_before_any_work(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="compile=True cannot route the adversarial view to the auxiliary BN"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "compiled", compile=True))
    assert not (tmp_path / "compiled").exists()


@pytest.mark.slow
def test_compile_trains_adv_train_through_ultralytics_compiled_loop(tmp_path, tiny_data, monkeypatch):
    """compile=True without an auxiliary BN (Adv-Train): Ultralytics' compiled loop trains the views and logs them."""
    compile_ = torch.compile
    compiled = []

    def fast(model, **kwargs):  # dynamo's graph capture as with inductor, without inductor's minutes of C++ builds
        compiled.append(kwargs.get("backend"))
        return compile_(model, **{**kwargs, "backend": "aot_eager", "mode": None})

    monkeypatch.setattr(torch, "compile", fast)
    trainer = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "compiled", compile=True, method="advtrain"))
    trainer.train()
    assert compiled == ["inductor"]  # Ultralytics' compile branch ran
    row = results(trainer.save_dir)[0]
    assert float(row["train/adv_loss"]) > 0 and float(row["train/box_loss"]) > 0
