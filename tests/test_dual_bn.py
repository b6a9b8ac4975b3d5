"""Tests for the auxiliary batch norm: conversion, routing, stripping, fusing, checkpoints, EMA and torch modes."""

import copy
import functools
import pickle

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import (
    ClassificationModel,
    DetectionModel,
    SegmentationModel,
    load_checkpoint,
    torch_safe_load,
)
from ultralytics.utils.torch_utils import ModelEMA, initialize_weights

from yolo_advamd.nn import (
    DualBatchNorm2d,
    DualSyncBatchNorm,
    aux_bn,
    convert_dual_bn,
    dual_bn_overhead,
    has_dual_bn,
    strip_aux_bn,
)

CFGS = [
    "yolov5nu.yaml",
    "yolov8n.yaml",
    "yolo11n.yaml",
    "yolo26n.yaml",
    "yolov8n-seg.yaml",
    "yolov8n-cls.yaml",
    "yolo11n-seg.yaml",
    "yolo11n-cls.yaml",
]


@functools.cache
def _built(cfg: str) -> nn.Module:
    """Build a 3-class Ultralytics model from `cfg` once per session."""
    task = SegmentationModel if "-seg" in cfg else ClassificationModel if "-cls" in cfg else DetectionModel
    return task(cfg, nc=3, verbose=False)


def build(cfg: str = "yolov8n.yaml") -> nn.Module:
    """Return a fresh stock model built from `cfg`."""
    return copy.deepcopy(_built(cfg))


def image(seed: int = 0) -> torch.Tensor:
    """Return a batch of two random 64x64 images."""
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Run `model` on `x` with a fixed seed and return every output tensor, in order."""
    torch.manual_seed(0)
    return leaves(model(x))


def leaves(out) -> list[torch.Tensor]:
    """Flatten the tensors of a nested tuple/list/dict model output."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out
    return [t for item in items for t in leaves(item)]


def assert_equal(a: list[torch.Tensor], b: list[torch.Tensor]):
    """Assert two lists of tensors are equal element for element, bit for bit."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y)


def assert_same_state(a: dict, b: dict):
    """Assert two state dicts have the same keys in the same order and equal values of the same dtype."""
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def duals(model: nn.Module) -> list[DualBatchNorm2d]:
    """Return the dual BNs of `model`."""
    return [m for m in model.modules() if isinstance(m, (DualBatchNorm2d, DualSyncBatchNorm))]


def desync(model: nn.Module) -> nn.Module:
    """Move every auxiliary BN away from its main BN (affine and statistics), so routing mistakes show in outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in duals(model):
            for t in (m.aux.weight, m.aux.bias, m.aux.running_mean):
                t.add_(0.2 * torch.randn(t.shape, generator=g))
            m.aux.running_var.mul_(1 + torch.rand(m.aux.running_var.shape, generator=g))
    return model


def aux_as_main(model: nn.Module) -> nn.Module:
    """Return a stock copy of a dual-BN `model` whose BNs hold the auxiliary BNs' values: the reference for routing."""
    sd = model.state_dict()
    stock = strip_aux_bn(copy.deepcopy(model))
    aux_key = lambda k: "{0}.aux.{2}".format(*k.rpartition("."))  # noqa: E731
    stock.load_state_dict({k: sd.get(aux_key(k), v) for k, v in stock.state_dict().items()})
    return stock


def bn_state(model: nn.Module, part: str) -> dict:
    """Return copies of the main (`part="main"`) or auxiliary (`part="aux"`) BN tensors of a dual-BN model by key."""
    names = {n for n, m in model.named_modules() if isinstance(m, (DualBatchNorm2d, DualSyncBatchNorm))}
    if part == "aux":
        names = {f"{n}.aux" for n in names}
    return {k: v.clone() for k, v in model.state_dict().items() if k.rpartition(".")[0] in names}


@pytest.mark.parametrize("cfg", CFGS)
def test_convert_adds_exact_aux_copy_and_keeps_main_keys(cfg):
    """Every BatchNorm2d becomes dual in place: main keys and values unchanged, aux an exact copy; twice is a no-op."""
    stock = build(cfg)
    n_bn = sum(type(m) is nn.BatchNorm2d for m in stock.modules())
    sd = stock.state_dict()
    model = copy.deepcopy(stock)
    assert convert_dual_bn(model) is model
    dual = duals(model)
    assert len(dual) == n_bn > 0
    assert all(type(m) is DualBatchNorm2d and type(m.aux) is nn.BatchNorm2d for m in dual)
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules() if all(m is not d.aux for d in dual))
    dsd = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(dsd[k], v), k
    extra = [k for k in dsd if k not in sd]
    assert extra and all(".aux." in k for k in extra)
    for k in extra:
        assert torch.equal(dsd[k], dsd[k.replace(".aux.", ".")]), k
    settings = [(m.eps, m.momentum) * 2 for m in stock.modules() if type(m) is nn.BatchNorm2d]
    assert [(m.eps, m.momentum, m.aux.eps, m.aux.momentum) for m in dual] == settings  # 1e-3, 0.03 if initialized
    auxes = [m.aux for m in dual]
    convert_dual_bn(model)
    assert [m.aux for m in duals(model)] == auxes and list(model.state_dict()) == list(dsd)


@pytest.mark.parametrize("cfg", CFGS)
def test_benign_routing_is_invisible(cfg):
    """Without routing, a converted model gives the stock outputs and updates the main BN statistics the stock way."""
    stock = build(cfg)
    model = desync(convert_dual_bn(copy.deepcopy(stock)))
    aux_before = bn_state(model, "aux")
    x = image()
    for train in (True, False):
        stock.train(train), model.train(train)
        assert_equal(run(model, x), run(stock, x))
    dsd = model.state_dict()
    assert_same_state(stock.state_dict(), {k: dsd[k] for k in stock.state_dict()})
    assert_same_state(bn_state(model, "aux"), aux_before)


def test_aux_routing_touches_only_aux_bn():
    """An aux-routed forward equals the stock model holding the aux values and leaves the main BN statistics alone."""
    model = desync(convert_dual_bn(build()))
    reference = aux_as_main(model)
    main_before, aux_before = bn_state(model, "main"), bn_state(model, "aux")
    x = image()
    for train in (True, False):
        model.train(train), reference.train(train)
        with aux_bn(model):
            assert_equal(run(model, x), run(reference, x))
    assert_same_state(bn_state(model, "main"), main_before)
    aux_after = bn_state(model, "aux")
    for k, v in aux_after.items():  # statistics moved, affine parameters did not
        assert torch.equal(v, aux_before[k]) is k.endswith((".weight", ".bias")), k
    assert_same_state(aux_as_main(model).state_dict(), reference.state_dict())  # statistics updated the stock way


def test_aux_gradients_reach_shared_convs_and_aux_affine_only():
    """An aux-routed loss has gradients on the convolutions and the aux BN affine params, none on the main BN."""
    model = desync(convert_dual_bn(build())).train()
    with aux_bn(model):
        out = leaves(model(image()))
    sum(t.float().square().mean() for t in out).backward()  # outside the block, as the trainer does
    dual = duals(model)
    assert all(p.grad is None for m in dual for p in (m.weight, m.bias))
    assert all(p.grad is not None for m in dual for p in (m.aux.weight, m.aux.bias))
    assert sum(p.grad.abs().sum() > 0 for m in dual for p in (m.aux.weight, m.aux.bias)) > len(dual)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]  # not DFL
    assert all(w.grad is not None for w in convs) and convs[0].grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    sum(t.float().square().mean() for t in leaves(model(image()))).backward()  # benign: the mirror image
    assert all(p.grad is None for m in dual for p in (m.aux.weight, m.aux.bias))
    assert all(p.grad is not None for m in dual for p in (m.weight, m.bias))


@pytest.mark.parametrize("cfg", CFGS)
def test_strip_restores_stock_state_dict_and_types(cfg):
    """strip_aux_bn(convert_dual_bn(m)) has m's state dict key for key, value for value, and m's module types."""
    stock = build(cfg)
    model = desync(convert_dual_bn(copy.deepcopy(stock))).train()
    with aux_bn(model):
        model(image())  # a trained aux BN must not leak into the stripped model
    assert strip_aux_bn(model) is model and not has_dual_bn(model)
    assert_same_state(model.state_dict(), stock.state_dict())
    assert [type(m) for m in model.modules()] == [type(m) for m in stock.modules()]
    assert_same_state(strip_aux_bn(stock).state_dict(), model.state_dict())  # a stock model is left as it is


@pytest.mark.parametrize("cfg", CFGS)
def test_fused_dual_model_equals_fused_stripped_model(cfg):
    """Ultralytics' fuse() folds the main BN and drops the aux BN: same outputs as fusing the stripped model."""
    model = desync(convert_dual_bn(build(cfg))).train()
    model(image(1))  # non-trivial main statistics
    model.eval()
    fused = copy.deepcopy(model).fuse(verbose=False)
    stripped = strip_aux_bn(copy.deepcopy(model)).fuse(verbose=False)
    assert not has_dual_bn(fused)
    assert_equal(run(fused, image()), run(stripped, image()))


def test_aux_bn_is_exception_safe_nests_and_is_per_model():
    """Routing is restored when the forward raises, survives an inner block, and never leaks to another model."""
    a, b = (convert_dual_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4))) for _ in range(2))
    flags = lambda m: {d.use_aux for d in duals(m)}  # noqa: E731
    with aux_bn(a) as routed:
        assert routed is a and flags(a) == {True} and flags(b) == {False}
        with aux_bn(a):
            assert flags(a) == {True}
        assert flags(a) == {True}
    assert flags(a) == {False}
    with pytest.raises(RuntimeError), aux_bn(a):
        a(torch.rand(1, 5, 8, 8))  # wrong channel count: the forward raises
    assert flags(a) == {False}


def test_aux_bn_refuses_model_without_dual_bn():
    """Routing a model that has no auxiliary BN is an error that names the fix, not a silent main-BN forward."""
    with pytest.raises(ValueError, match=r"convert_dual_bn\(model\)"), aux_bn(build()):
        pass


def test_conversion_carries_eps_and_momentum():
    """Each BN's own eps and momentum go to both BNs; a direct DualBatchNorm2d builds its aux with the same settings."""
    model = convert_dual_bn(nn.Sequential(nn.BatchNorm2d(4, eps=1e-4, momentum=0.2), nn.BatchNorm2d(4, momentum=None)))
    assert [(m.eps, m.momentum, m.aux.eps, m.aux.momentum) for m in duals(model)] == [
        (1e-4, 0.2, 1e-4, 0.2),
        (1e-5, None, 1e-5, None),
    ]
    bn = DualBatchNorm2d(4, eps=1e-3, momentum=0.03)
    assert (bn.aux.eps, bn.aux.momentum, bn.use_aux) == (1e-3, 0.03, False)
    model = convert_dual_bn(build())  # Ultralytics' initialize_weights ran in the constructor, weights load afterwards
    model.load(build(), verbose=False)
    assert {(m.eps, m.momentum, m.aux.eps, m.aux.momentum) for m in duals(model)} == {(1e-3, 0.03, 1e-3, 0.03)}
    model = convert_dual_bn(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    initialize_weights(model)  # after the conversion: it reaches only the plain aux child
    x = torch.randn(2, 3, 5, 5)
    with aux_bn(model):
        routed = model(x)
    assert {(m.aux.eps, m.aux.momentum) for m in duals(model)} == {(1e-5, 0.1)}  # the main BN's settings rule
    torch.testing.assert_close(routed, model(x), rtol=0, atol=0)  # same weights and statistics: same output


def test_dual_bn_survives_pickle_deepcopy_and_ultralytics_checkpoint(tmp_path):
    """A dual model saved like Ultralytics' trainer (EMA, fp16) loads back with both BNs, plain and safe-loaded."""
    model = desync(convert_dual_bn(build())).eval()
    ema = ModelEMA(model)
    path = tmp_path / "last.pt"
    torch.save({"epoch": 0, "model": None, "ema": copy.deepcopy(ema.ema).half(), "updates": ema.updates}, path)
    expected = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    loaded, _ = load_checkpoint(path)
    assert len(duals(loaded)) == len(duals(model)) and {m.use_aux for m in duals(loaded)} == {False}
    assert_same_state(loaded.state_dict(), expected)
    safe, _ = torch_safe_load(path, safe_only=True)
    assert has_dual_bn(safe["ema"])
    x = image()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert_same_state(clone.state_dict(), model.state_dict())
        with aux_bn(clone), aux_bn(model):
            assert_equal(run(clone, x), run(model, x))


def test_model_ema_averages_aux_bn():
    """ModelEMA averages the auxiliary BN's parameters and statistics like every other tensor."""
    model = desync(convert_dual_bn(build())).train()
    ema = ModelEMA(model)
    before = {k: v.clone() for k, v in ema.ema.state_dict().items() if ".aux." in k and v.is_floating_point()}
    with aux_bn(model):
        model(image())
    with torch.no_grad():
        for m in duals(model):
            m.aux.weight.add_(1.0)
    ema.update(model)
    d, msd, esd = ema.decay(1), model.state_dict(), ema.ema.state_dict()
    moved = [k for k, v in before.items() if not torch.equal(msd[k], v)]
    assert {k.rpartition(".")[2] for k in moved} == {"weight", "running_mean", "running_var"}
    for k, v in before.items():
        assert torch.equal(esd[k], v) is (k not in moved), k
        torch.testing.assert_close(esd[k], v * d + msd[k] * (1 - d))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "autocast_bf16"])
def test_routing_under_no_grad_inference_mode_and_autocast(mode):
    """Both routes give exactly the matching stock model's outputs under no_grad, inference_mode and CPU autocast."""
    model = desync(convert_dual_bn(build())).eval()
    benign, adversarial = strip_aux_bn(copy.deepcopy(model)), aux_as_main(model)
    x = image()
    context = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "autocast_bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }[mode]
    with context():
        assert_equal(run(model, x), run(benign, x))
        with aux_bn(model):
            out = run(model, x)
        assert_equal(out, run(adversarial, x))
    if mode == "autocast_bf16":
        assert torch.bfloat16 in {t.dtype for t in out}


def test_torch_compile_follows_routing():
    """A compiled dual model switches BN when routed (no stale graph) and matches the eager outputs."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    model = desync(convert_dual_bn(model)).eval()
    x = image()
    with torch.no_grad():
        benign = model(x)
        with aux_bn(model):
            adversarial = model(x)
        assert not torch.equal(benign, adversarial)
        compiled = torch.compile(model, backend="aot_eager")  # no C compiler needed; tests dynamo's guards
        try:
            first = compiled(x)
        except Exception as e:  # an environment without a working torch.compile
            pytest.skip(f"torch.compile unavailable here: {e}")
        with aux_bn(compiled):
            routed = compiled(x)
        assert_equal([first, routed, compiled(x)], [benign, adversarial, benign])


def test_sync_batchnorm_keeps_both_bns_synchronized():
    """SyncBatchNorm becomes DualSyncBatchNorm; convert_sync_batchnorm then convert_dual_bn keeps the trained aux BN."""
    model = convert_dual_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)))
    assert type(model[1]) is DualSyncBatchNorm and type(model[1].aux) is nn.SyncBatchNorm
    dual = desync(convert_dual_bn(build()))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(dual))
    assert not has_dual_bn(synced)  # torch rebuilds each BN as a plain SyncBatchNorm: its aux child is not used
    with pytest.raises(ValueError, match="convert_sync_batchnorm"), aux_bn(synced):
        pass
    convert_dual_bn(synced)
    assert all(type(m) is DualSyncBatchNorm and type(m.aux) is nn.SyncBatchNorm for m in duals(synced))
    assert len(duals(synced)) == len(duals(dual))
    assert_same_state(synced.state_dict(), dual.state_dict())
    x = image()
    for train in (True, False):  # no process group: SyncBatchNorm normalizes locally, like BatchNorm2d
        dual.train(train), synced.train(train)
        assert_equal(run(synced, x), run(dual, x))
        with aux_bn(synced), aux_bn(dual):
            assert_equal(run(synced, x), run(dual, x))
    assert {type(m) for m in strip_aux_bn(synced).modules()} >= {nn.SyncBatchNorm}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in synced.modules())


def test_overhead_is_one_bn_copy():
    """The overhead report counts exactly one copy of every BN's parameters and buffers, under 1% of the model."""
    stock = build()
    bns = [m for m in stock.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not has_dual_bn(stock)
    model = convert_dual_bn(copy.deepcopy(stock))
    assert has_dual_bn(model)
    report = dual_bn_overhead(model)
    params = sum(p.numel() for m in bns for p in m.parameters())
    assert report["layers"] == len(bns)
    assert report["parameters"] == params
    assert report["buffers"] == sum(b.numel() for m in bns for b in m.buffers())
    assert report["parameters_fraction"] == params / sum(p.numel() for p in stock.parameters())
    assert 0 < report["parameters_fraction"] < report["size_fraction"] < 0.01
