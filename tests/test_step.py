"""The AdvAmd step's views: each routed to its BN inside `model(view)`; a non-finite view undone, BN statistics too."""

from types import SimpleNamespace

import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_advamd.cfg import resolve_advamd_cfg
from yolo_advamd.loss import wrap_criterion
from yolo_advamd.methods import METHODS
from yolo_advamd.nn.dual_bn import DualBatchNorm2d, aux_bn, convert_dual_bn
from yolo_advamd.step import ViewGuard

NC = 10


@pytest.fixture
def guarded():
    """A dual-BN yolov8n in train mode with a ViewGuard, an auxiliary BN unlike the main one, a batch with views."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    model.args = SimpleNamespace(**{**vars(get_cfg()), **resolve_advamd_cfg({"attack_model": "current"})})
    module = wrap_criterion(convert_dual_bn(model).train())
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, DualBatchNorm2d):
                m.aux.weight.mul_(0.5)  # the two BNs normalize alike but scale differently
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 64, 64, generator=g)
    batch = {
        "img": img,
        "img_med": (img + 0.02).clamp(0, 1),
        "img_adv": (img - 0.03).clamp(0, 1),
        "cls": torch.tensor([[1.0], [4.0]]),
        "bboxes": torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.6, 0.5, 0.3, 0.4]]),
        "batch_idx": torch.tensor([0.0, 1.0]),
    }
    return module, ViewGuard(module), batch


def plain_loss(module, images, batch, routed: bool) -> torch.Tensor:
    """Ultralytics' loss of `module` on `images` through the main or the auxiliary BNs, without any view machinery."""
    criterion = module.init_criterion()
    if routed:
        with aux_bn(module):
            preds = module.predict(images)
    else:
        preds = module.predict(images)
    return criterion(preds, {**batch, "img": images})[0]


def test_each_view_runs_through_its_own_bn_and_the_routing_is_undone(guarded):
    module, _, batch = guarded
    args = module.args
    for name, images, routed in (("benign", "img", False), ("med", "img_med", False), ("adv", "img_adv", True)):
        loss, _ = module(METHODS["advamd"](args).view_batch(batch, name, None))
        assert torch.allclose(loss, plain_loss(module, batch[images], batch, routed), rtol=1e-6), name
        assert not any(m.use_aux for m in module.modules() if isinstance(m, DualBatchNorm2d))  # back on the main BN
    assert not torch.allclose(
        plain_loss(module, batch["img"], batch, True), plain_loss(module, batch["img"], batch, False)
    )


def test_a_non_finite_view_is_reported_and_its_window_leaves_no_bn_statistics(guarded):
    module, guard, batch = guarded
    before = {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k}
    module(METHODS["advamd"](module.args).view_batch(batch, "benign", None))
    nan = {**batch, "img_adv": torch.full_like(batch["img"], float("nan"))}
    module(METHODS["advamd"](module.args).view_batch(nan, "adv", None))
    bad = guard.pop_bad()
    assert list(bad) == ["adv"]
    after = module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the benign view's update was undone as well
    module(METHODS["advamd"](module.args).view_batch(batch, "benign", None))
    assert guard.pop_bad() == {}  # a finite window keeps its statistics
    assert not torch.equal(module.state_dict()["model.0.bn.running_mean"], before["model.0.bn.running_mean"])
