"""Scale out: one AdvAmd step in two CPU processes (gloo) gives the same gradients on every rank, aux BN included;
each method's step too (distillation: its teacher's soft targets per rank)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

WORLD = 2


def synthetic_batch(rank: int, n: int = 2, size: int = 64) -> dict:
    """A rank-specific batch with two boxes per image."""
    g = torch.Generator().manual_seed(100 + rank)
    img = torch.rand(n, 3, size, size, generator=g)
    boxes = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.7, 0.6, 0.25, 0.35]]).repeat(n, 1)
    return {
        "img": img,
        "cls": torch.randint(0, 10, (2 * n, 1), generator=g).float(),
        "bboxes": boxes,
        "batch_idx": torch.arange(n).repeat_interleave(2).float(),
    }


def ddp_worker(rank: int, init_file: str, method: str, attack: str, out: dict) -> None:
    """Worker: build the same (dual-BN) model on each rank, run the method's views under DDP, return flat gradients."""
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    import yolo_advamd  # noqa: F401  (offline before Ultralytics, in the spawned process)
    from yolo_advamd.attacks import build_attack
    from yolo_advamd.cfg import resolve_advamd_cfg
    from yolo_advamd.checkpoint import freeze_target
    from yolo_advamd.loss import wrap_criterion
    from yolo_advamd.methods import METHODS
    from yolo_advamd.nn.dual_bn import DualBatchNorm2d, convert_dual_bn
    from yolo_advamd.stage import AttackStage
    from yolo_advamd.step import ViewGuard, advamd_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    settings = resolve_advamd_cfg({"method": method, "attack": attack, "eps": 0.03, "steps": 1})
    model.args = SimpleNamespace(**{**vars(get_cfg()), **settings})
    run = METHODS[method](model.args)
    run.setup(freeze_target(model) if run.needs_target() else None)
    module = wrap_criterion((convert_dual_bn(model) if settings["aux_bn"] else model).train())
    ddp = DistributedDataParallel(module, find_unused_parameters=True)  # as Ultralytics builds it
    guard = ViewGuard(module)
    stage = AttackStage(
        build_attack(attack, eps=0.03, steps=1),
        phi=0.7,
        attack_model="current",
        terms=settings["attack_terms"],
        attack_aux_bn=run.attack_aux_bn(),
    )  # as the trainer builds it
    stage = stage if run.attacks else None  # distillation attacks nothing
    abar = torch.linspace(0.5, 1.5, 10)
    batch = synthetic_batch(rank)
    backward = lambda loss: (loss * WORLD).backward()  # noqa: E731
    view = advamd_step(ddp, module, batch, stage, run, abar, backward)
    loss, items = ddp(view)  # the last view, as Ultralytics' loop does it
    (loss.sum() * WORLD).backward()
    aux = [m.aux.weight.grad for m in module.modules() if isinstance(m, DualBatchNorm2d)]
    flat = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    out[rank] = {
        "grads": flat,
        "aux_norm": float(torch.cat(aux).norm()) if aux else 0.0,
        "bad": guard.pop_bad(),
        "n": len(aux),
        "loop_view": view["view"].name,
        "items": list(items),
    }
    dist.barrier()  # both ranks leave together (a rank torn down while the other still ran can abort)
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "method, attack, loop_view, extra",
    [
        ("advamd", "fgsm", "adv", ["med_loss", "adv_loss"]),  # the benign pass's gradient is FGSM's: the loop runs adv
        ("advamd", "pgd", "benign", ["med_loss", "adv_loss"]),
        ("detadvprop", "fgsm", "benign", ["adv_loss"]),  # attack_terms=max: two attacks, then both views
        ("udfa", "fgsm", "adv", ["align_loss"]),
        ("distill", "fgsm", "benign", ["soft_loss"]),  # no attack: one view, the soft class term logged beside
    ],
)
def test_step_gradients_agree_across_ranks(tmp_path, method, attack, loop_view, extra):
    """Every method's step under DDP leaves the same gradients on each rank, auxiliary BN included where it has one."""
    out = mp.Manager().dict()
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), method, attack, out), nprocs=WORLD, join=True)
    a, b = out[0], out[1]
    assert a["loop_view"] == loop_view
    assert a["items"] == ["box_loss", "cls_loss", "dfl_loss", *extra]
    assert a["bad"] == {} and b["bad"] == {}
    assert (a["n"] > 0 and a["aux_norm"] > 0) == (method not in {"udfa", "distill"}), "the aux BN got no gradient"
    assert a["grads"].shape == b["grads"].shape
    assert torch.allclose(a["grads"], b["grads"], rtol=1e-5, atol=1e-7)
    assert a["aux_norm"] == pytest.approx(b["aux_norm"], rel=1e-6)
