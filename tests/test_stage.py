"""Tests for the attack stage: adversarial and mediate views, target vs current model, collate wrapping, flip stats."""

import copy
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_unchanged, calibrate, snapshot
from torch import nn
from torch.utils.data import DataLoader
from ultralytics.cfg import get_cfg
from ultralytics.data.dataset import YOLODataset
from ultralytics.nn.tasks import DetectionModel

from yolo_advamd.attacks import build_attack
from yolo_advamd.attacks.objectives import DetectionObjective
from yolo_advamd.checkpoint import freeze_target
from yolo_advamd.loss import wrap_criterion
from yolo_advamd.methods import METHODS
from yolo_advamd.stage import DEFAULT_PHI, AttackStage, preprocess
from yolo_advamd.vulnerability import Vulnerability

NC, IMGSZ, EPS = 10, 64, 0.03


def make_model() -> DetectionModel:
    """A yolov8n detector (nc=10) in train mode whose BN statistics are calibrated, so eval-mode gradients are real."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    model.args = get_cfg()
    return calibrate(model, IMGSZ)


def samples(n: int = 4) -> list[dict]:
    """Synthetic dataset items as a YOLODataset yields them: uint8 CHW image, per-image cls, normalized xywh boxes."""
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        k = 1 + i % 2
        xy = 0.3 + 0.4 * torch.rand(k, 2, generator=g)
        wh = 0.2 + 0.2 * torch.rand(k, 2, generator=g)
        items.append(
            {
                "img": torch.randint(0, 256, (3, IMGSZ, IMGSZ), dtype=torch.uint8, generator=g),
                "cls": torch.randint(0, NC, (k, 1), generator=g).float(),
                "bboxes": torch.cat([xy, wh], 1),
                "batch_idx": torch.zeros(k),
                "im_file": f"img{i}.jpg",
            }
        )
    return items


def make_batch() -> dict:
    """A preprocessed batch of 2 images on the CPU."""
    return preprocess(YOLODataset.collate_fn(samples(2)), torch.device("cpu"))


def relabel_to_benign_prediction(model: nn.Module, batch: dict) -> dict:
    """Relabel each object with the class `model` predicts for it, so that every object is benign-correct.

    The assigned anchors depend on the labels, so this repeats until the labels are a fixed point.
    """
    for _ in range(5):
        objective = DetectionObjective(model, batch)
        with torch.no_grad(), objective.frozen():
            pred = objective.object_logits(batch["img"]).argmax(1)
        if torch.equal(pred, objective.labels):
            return batch
        batch = {**batch, "cls": pred.float().view(-1, 1)}
    raise AssertionError("labels did not settle on the model's benign predictions")


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    """The model being trained (train mode)."""
    return make_model()


def test_views_stay_within_budget_and_image_range(model):
    """img_adv is within eps of img, img_med within phi * eps, both in [0, 1]; img and the other keys are untouched."""
    phi = DEFAULT_PHI["fgsm"]
    stage = AttackStage(build_attack("fgsm", eps=EPS), phi, "target", model=model)
    batch = make_batch()
    img = batch["img"].clone()
    out = stage(batch)
    assert out is not batch and "img_adv" not in batch and torch.equal(batch["img"], img)
    assert all(out[k] is batch[k] for k in batch)
    adv, med = out["img_adv"], out["img_med"]
    assert adv.shape == med.shape == img.shape and adv.dtype == med.dtype == img.dtype
    assert (adv - img).abs().max() <= EPS + 1e-6
    assert (med - img).abs().max() <= phi * EPS + 1e-6
    assert (adv - img).abs().max() > EPS / 2  # the attack did move the image
    for view in (adv, med):
        assert view.min() >= 0 and view.max() <= 1
    torch.testing.assert_close(med, (img + phi * (adv - img)).clamp(0, 1), atol=1e-6, rtol=0)


def test_target_mode_never_changes_trained_model_nor_target(model):
    """Attacking the frozen target changes neither the trained model nor the target (weights, BN stats, modes)."""
    model.train()
    attack = build_attack("pgd", eps=EPS, steps=2, random_start=True, seed=0)
    stage = AttackStage(attack, 0.5, "target", model=model)
    before_model, before_target = snapshot(model), snapshot(stage.target)
    stage(make_batch(), model)
    assert_unchanged(model, before_model)
    assert_unchanged(stage.target, before_target)
    assert model.training and not stage.target.training


def test_target_copy_is_frozen_and_not_part_of_the_model(model):
    """The target copy is eval, float32, requires_grad=False, and never in model.modules() or model.state_dict()."""
    keys = set(model.state_dict())
    stage = AttackStage(build_attack("fgsm", eps=EPS), 0.7, "target", model=model)
    batch = make_batch()
    out = stage(batch, model)  # the passed (trained) model is ignored in target mode
    target = stage.target
    fgsm = build_attack("fgsm", eps=EPS)
    assert torch.equal(out["img_adv"], fgsm(batch["img"], DetectionObjective(target, batch)).adv)
    assert not torch.equal(out["img_adv"], fgsm(batch["img"], DetectionObjective(model, batch)).adv)
    assert not isinstance(stage, nn.Module)
    assert target is not model and all(m is not target for m in model.modules())
    assert not any(p is q for p in target.parameters() for q in model.parameters())
    assert set(model.state_dict()) == keys
    assert not target.training and all(not p.requires_grad and p.dtype == torch.float32 for p in target.parameters())
    target_state = target.state_dict()
    assert all(torch.equal(target_state[k], v) for k, v in model.state_dict().items())  # same starting weights
    assert freeze_target(model).training is False and model.training


def test_current_mode_attacks_passed_model_and_leaves_it_as_it_was(model):
    """In current mode the passed model is attacked (same δ as attacking it directly) and left exactly as it was."""
    model.train()
    stage = AttackStage(build_attack("fgsm", eps=EPS), 0.7, "current")
    assert stage.target is None
    batch = make_batch()
    before = snapshot(model)
    out = stage(batch, model)
    assert_unchanged(model, before)
    assert model.training
    direct = build_attack("fgsm", eps=EPS)(batch["img"], DetectionObjective(model, batch))
    torch.testing.assert_close(out["img_adv"], (batch["img"] + direct.delta).clamp(0, 1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs the model being trained"):
        stage(batch)
    by_reference = AttackStage(build_attack("fgsm", eps=EPS), 0.7, "current", model=model)
    torch.testing.assert_close(by_reference(batch)["img_adv"], out["img_adv"])


def test_benign_training_gradient_gives_the_attacks_fgsm(model):
    """FGSM on the current model from the benign training pass's input gradient equals running the attack itself."""
    model = wrap_criterion(copy.deepcopy(model).train())
    args = SimpleNamespace(beta1=1.0, beta2=1.0, beta3=1.0, aux_bn=False, advamd_loss=False)
    stage = AttackStage(build_attack("fgsm", eps=EPS), 0.7, "current")
    assert stage.reuses_gradient
    batch = make_batch()
    attacked = stage(batch, model)
    img = batch["img"].clone().requires_grad_(True)
    loss, _ = model(
        METHODS["advamd"](args).view_batch({**batch, "img": img}, "benign", None)
    )  # the trainer's benign view
    loss.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    reused = stage(batch, model, grad=img.grad)
    same = reused["img_adv"] == attacked["img_adv"]
    assert same.float().mean() > 0.999, "the sign of the training gradient differs from the attack's"
    torch.testing.assert_close(reused["img_adv"], attacked["img_adv"], atol=2 * EPS, rtol=0)  # at most a flipped sign
    assert not AttackStage(build_attack("pgd", eps=EPS, steps=2), 0.5, "current").reuses_gradient
    assert not AttackStage(build_attack("fgsm", eps=EPS), 0.7, "target", model=model).reuses_gradient
    with pytest.raises(ValueError, match="cannot reuse a training gradient"):
        AttackStage(build_attack("fgsm", eps=EPS), 0.7, "current", terms="cls")(batch, model, grad=img.grad)


def test_wrap_collate_equals_stage_on_preprocessed_batch(model):
    """A dataloader with the wrapped collate gives the same views as the stage called on the preprocessed batch."""
    target = freeze_target(model)

    def stage():
        attack = build_attack("pgd", eps=EPS, steps=2, random_start=True, seed=3)
        return AttackStage(attack, 0.5, "target", target=target)

    loader = DataLoader(samples(4), batch_size=2, collate_fn=stage().wrap_collate(YOLODataset.collate_fn, "cpu"))
    reference = stage()
    for i, batch in enumerate(loader):
        expected = reference(preprocess(YOLODataset.collate_fn(samples(4)[2 * i : 2 * i + 2]), torch.device("cpu")))
        assert batch["img"].dtype == torch.float32 and batch["img"].max() <= 1
        assert batch["im_file"] == expected["im_file"]
        for k in ("img", "img_adv", "img_med", "cls", "bboxes", "batch_idx"):
            torch.testing.assert_close(batch[k], expected[k], atol=0, rtol=0)


def test_flip_statistics_reach_the_vulnerability_only_when_collected(model):
    """With collect_stats every object reaches the Vulnerability; without it nothing is counted."""
    vuln = Vulnerability(NC)
    stage = AttackStage(build_attack("pgd", eps=0.1, steps=3, seed=0), 0.5, "target", model=model, vulnerability=vuln)
    batch = make_batch()
    stage(batch)
    assert vuln.seen.sum() == 0
    stage.collect_stats = True
    stage(batch)
    stage(batch)
    n = len(batch["cls"])
    assert vuln.seen.sum() == 2 * n
    assert torch.equal(vuln.seen, 2 * torch.bincount(batch["cls"].view(-1).long(), minlength=NC))
    assert vuln.counts.sum() <= 2 * n
    with pytest.raises(ValueError, match="needs vulnerability"):
        AttackStage(build_attack("fgsm", eps=EPS), 0.7, "target", model=model, collect_stats=True)


@pytest.mark.parametrize(
    ("name", "kwargs", "extra"),
    [
        ("deepfool", {"steps": 3}, 0),  # clean and adv logits come with the attack
        ("fgsm", {}, 1),  # clean logits come with the gradient pass; one forward at img_adv
        ("pgd", {"steps": 2, "random_start": True, "seed": 0}, 2),  # no clean pass in the attack: two forwards
    ],
)
def test_flip_statistics_reuse_attack_logits_and_match_direct_evaluation(model, name, kwargs, extra):
    """Stats cost only the forwards the attack did not already make, and count the flips of img -> img_adv."""
    target = freeze_target(model)
    batch = relabel_to_benign_prediction(target, make_batch())
    calls = []
    handle = target.register_forward_hook(lambda *_: calls.append(1))
    try:
        counts = []
        for collect in (False, True):
            vuln = Vulnerability(NC)
            stage = AttackStage(build_attack(name, eps=0.1, **kwargs), 0.5, "target", target=target, vulnerability=vuln)
            stage.collect_stats = collect
            calls.clear()
            out = stage(batch)
            counts.append(len(calls))
    finally:
        handle.remove()
    assert counts[1] - counts[0] == extra
    objective = DetectionObjective(target, batch)
    expected = Vulnerability(NC)
    with torch.no_grad(), objective.frozen():
        clean, adv = objective.object_logits(batch["img"]), objective.object_logits(out["img_adv"])
        expected.update(objective.labels, clean, adv)
    assert expected.counts.sum() == len(batch["cls"])  # every object benign-correct: the comparison is not vacuous
    assert torch.equal(vuln.counts, expected.counts) and torch.equal(vuln.seen, expected.seen)


def test_bad_settings_raise_clear_errors(model):
    """phi outside (0, 1), an unknown attack_model or terms, and target mode without a model name the fix."""
    attack = build_attack("fgsm", eps=EPS)
    with pytest.raises(ValueError, match=r"phi=1.0 is outside \(0, 1\)"):
        AttackStage(attack, 1.0, "target", model=model)
    with pytest.raises(ValueError, match="attack_model='ema'"):
        AttackStage(attack, 0.5, "ema", model=model)
    with pytest.raises(ValueError, match="attack_terms=boxes is not valid"):
        AttackStage(attack, 0.5, "current", terms="boxes")
    with pytest.raises(ValueError, match="needs model="):
        AttackStage(attack, 0.5, "target")


def test_attack_through_the_auxiliary_bn_follows_the_aux_bn_and_restores_the_routing():
    """Det-AdvProp's stage attacks the current model through its auxiliary BNs, then leaves it routed as before."""
    from yolo_advamd.nn.dual_bn import DualBatchNorm2d, aux_bn, convert_dual_bn

    model = wrap_criterion(convert_dual_bn(make_model()).train())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DualBatchNorm2d):
                m.aux.weight.mul_(-1)  # gradients through the auxiliary BN point elsewhere
    batch, attack = make_batch(), build_attack("fgsm", eps=EPS)
    routed = AttackStage(attack, 0.7, "current", model=model, attack_aux_bn=True)(batch)["img_adv"]
    plain = AttackStage(attack, 0.7, "current", model=model)(batch)["img_adv"]
    with aux_bn(model):
        expected = attack(batch["img"], DetectionObjective(model, batch)).adv
    assert torch.equal(routed, expected) and not torch.equal(routed, plain)
    assert not any(m.use_aux for m in model.modules() if isinstance(m, DualBatchNorm2d))
    assert not AttackStage(attack, 0.7, "current", model=model, attack_aux_bn=True).reuses_gradient
