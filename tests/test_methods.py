"""AdvAmd's relatives, one switch each: every method's step is the sum of its parts, and each trains, resumes,
validates and exports like AdvAmd."""

from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from helpers import boxes_batch, results, tiny
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_advamd.align import alignment_loss, level_masks, neck_layers
from yolo_advamd.attacks import build_attack
from yolo_advamd.cfg import parse_cli, resolve_advamd_cfg
from yolo_advamd.checkpoint import freeze_target
from yolo_advamd.loss import wrap_criterion
from yolo_advamd.methods import METHODS
from yolo_advamd.nn.dual_bn import aux_bn, convert_dual_bn
from yolo_advamd.stage import AttackStage
from yolo_advamd.step import ViewGuard, advamd_step
from yolo_advamd.trainer import AdvAmdTrainer

NC = 10


def batch() -> dict:
    """Two 64 px images with two boxes each."""
    return boxes_batch(3)


def step(method: str, **kw):
    """Run one step of `method` the way the trainer does; return the module, the loop's view, every view's loss."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    settings = resolve_advamd_cfg({"method": method, "eps": 0.03, "beta1": 0.7, "beta2": 0.9, "beta3": 1.3, **kw})
    model.args = SimpleNamespace(**{**vars(get_cfg()), **settings})
    run = METHODS[method](model.args)
    teacher = freeze_target(model) if run.needs_target() else None
    run.setup(teacher)
    module = wrap_criterion(convert_dual_bn(model) if settings["aux_bn"] else model).train()
    ViewGuard(module)
    a = model.args
    stage = AttackStage(
        build_attack(a.attack, eps=a.eps, steps=a.steps),
        a.phi,
        a.attack_model,
        model=module,
        terms=a.attack_terms,
        attack_aux_bn=run.attack_aux_bn(),
    )  # as the trainer builds it
    losses = []
    view = advamd_step(module, module, batch(), stage, run, torch.linspace(0.5, 1.5, NC), losses.append)
    losses.append(module(view)[0].sum())
    return module, view, sum(losses), teacher


def detection(module, images, b, routed=False, weights=None) -> torch.Tensor:
    """Ultralytics' detection loss of `module` on `images` (main or auxiliary BN), optionally class-weighted."""
    criterion = module.init_criterion()
    criterion.class_weights = None if weights is None else weights.view(1, 1, -1)
    if routed:
        with aux_bn(module):
            preds = module.predict(images)
    else:
        preds = module.predict(images)
    return criterion(preds, {**b, "img": images})[0].sum()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_loss_column_fits_the_progress_bar_header(method):
    """Ultralytics prints each loss under an 11-character header: a longer name runs into the column before it."""
    from yolo_advamd.nn.autoencoder import Autoencoder

    columns = METHODS[method](SimpleNamespace(**resolve_advamd_cfg({"method": method}))).columns()
    if method == "magnet":  # its loss is the autoencoder's
        columns = tuple(Autoencoder().loss({"img": torch.rand(1, 3, 8, 8)})[1])
    assert all(len(c) <= 11 for c in columns), columns


def test_advamd_step_is_the_weighted_sum_of_its_three_views():
    module, view, total, _ = step("advamd", abar_scope="all", attack_model="current")
    b, abar = batch(), torch.linspace(0.5, 1.5, NC)
    hand = (
        0.7 * detection(module, b["img"], b)
        + 0.9 * detection(module, view["img_med"], b)
        + 1.3 * detection(module, view["img_adv"], b, routed=True, weights=abar)
    )
    assert torch.allclose(total, hand, rtol=1e-5)


def test_detadvprop_step_is_the_clean_loss_plus_the_adversarial_loss_through_the_aux_bn():
    module, view, total, _ = step("detadvprop")
    b = batch()
    assert (
        view["view"].name == "benign"
    )  # attack_terms=max: the attack needs passes of its own, the loop trains the clean view
    hand = 0.7 * detection(module, b["img"], b) + 1.3 * detection(module, view["img_adv"], b, routed=True)
    assert torch.allclose(total, hand, rtol=1e-5)


def test_udfa_step_is_the_clean_loss_plus_the_feature_alignment_with_the_teacher():
    module, view, total, teacher = step("udfa")
    b = batch()
    assert view["view"].name == "adv"  # FGSM from the clean pass's input gradient, as UDFA's code does

    def neck(model, images):
        feats = {}
        hooks = [
            model.model[j].register_forward_hook(lambda m, i, o, k=k: feats.update({k: o}))
            for k, j in enumerate(neck_layers(model))
        ]
        model.predict(images)
        for h in hooks:
            h.remove()
        return [feats[k] for k in sorted(feats)]

    with torch.no_grad():
        target = neck(teacher, b["img"])
    student = neck(module, view["img_adv"])
    masks = level_masks(b, [f.shape[-2:] for f in target], (64, 64))
    fg = bg = 0.0
    for s, t, m in zip(student, target, masks):
        d, m = (s - t) ** 2, m.expand_as(s)
        fg += (d * m).sum() / (m.sum().clamp(min=1) * 8)  # UDFA: max(1, count)
        bg += (d * (1 - m)).sum() / ((1 - m).sum().clamp(min=1) * 8)
    align = (fg + 6 * bg) / len(student)
    assert torch.allclose(alignment_loss(student, target, masks), align, rtol=1e-6)
    hand = 0.7 * detection(module, b["img"], b) + 1.3 * 2 * align  # the alignment scaled by the batch size, like YOLO
    assert torch.allclose(total, hand, rtol=1e-5)


def test_level_masks_mark_each_box_on_the_level_of_its_size():
    b = {
        "img": torch.zeros(1, 3, 512, 512),
        "bboxes": torch.tensor([[0.25, 0.25, 0.125, 0.125], [0.5, 0.5, 0.5, 0.5]]),
        "batch_idx": torch.zeros(2),
    }
    masks = level_masks(b, [(64, 64), (32, 32), (16, 16)], (512, 512))
    small, large = masks[0][0, 0], masks[2][0, 0]  # sqrt(64 * 64) / 56 -> level 0; sqrt(256 * 256) / 56 -> level 2
    assert small.sum() == 8 * 8 and small[12:20, 12:20].all()
    assert large.sum() == 8 * 8 and large[4:12, 4:12].all()
    assert masks[1].sum() == 0


def test_bad_method_combinations_are_refused_before_any_work(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="method=udfa aligns the model with a teacher"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "bad", method="udfa"))  # a YAML model has no teacher
    with pytest.raises(ValueError, match="mediate=True does not fit method=detadvprop"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "bad", method="detadvprop", mediate=True))
    with pytest.raises(ValueError, match="attack_model=target does not fit method=udfa"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "bad", method="udfa", attack_model="target"))
    with pytest.raises(ValueError, match="attack_terms=both is not valid"):
        AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "bad", attack_terms="both"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["attack_terms=cls", "attack_terms=box", "attack_terms=max", "abar_scope=all"])
def test_advamd_trains_with_each_attack_terms_and_abar_scope_from_the_command_line(tmp_path, tiny_data, switch):
    from yolo_advamd.cli import train

    run = tiny(tmp_path, tiny_data, "run")
    argv = [f"{k}={v}" for k, v in run.items() if k not in {"data", "model"}] + [switch, "attack_model=current"]
    trainer = train({**parse_cli(argv), "data": run["data"]})  # as `python train_advamd.py ... attack_terms=box` does
    key, value = switch.split("=")
    assert getattr(trainer.args, key) == value and trainer.stage.terms == trainer.args.attack_terms
    row = results(trainer.save_dir)[0]
    assert all(0 < float(row[f"train/{k}"]) < 100 for k in ("box_loss", "cls_loss", "med_loss", "adv_loss"))


@pytest.mark.slow
@pytest.mark.parametrize("switch, variant", [(None, "exact"), ("deepfool=fast", "fast")])
def test_advamd_deepfool_trains_with_the_exact_variant_unless_deepfool_fast(tmp_path, tiny_data, switch, variant):
    from yolo_advamd.cli import train

    run = tiny(tmp_path, tiny_data, "run")
    argv = [f"{k}={v}" for k, v in run.items() if k not in {"data", "model"}] + ["attack=deepfool", "steps=2"]
    trainer = train({**parse_cli(argv + ([switch] if switch else [])), "data": run["data"]})  # as train_advamd.py
    assert trainer.args.deepfool == variant and trainer.stage.attack.variant == variant
    row = results(trainer.save_dir)[0]
    assert all(0 < float(row[f"train/{k}"]) < 100 for k in ("box_loss", "cls_loss", "med_loss", "adv_loss"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, column", [("detadvprop", "adv_loss"), ("udfa", "align_loss"), ("distill", "soft_loss")]
)
def test_method_trains_resumes_validates_and_exports_a_stock_model(tmp_path, tiny_data, method, column):
    from yolo_advamd.export import export_model, pickled_globals
    from yolo_advamd.validate import validate_advamd

    base = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, "base", method="vanilla"))
    base.train()

    class Interrupt(Exception):
        pass

    def stop(trainer):
        raise Interrupt

    first = AdvAmdTrainer(overrides=tiny(tmp_path, tiny_data, method, model=str(base.last), method=method, epochs=2))
    first.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(Interrupt):
        first.train()
    teacher = deepcopy(first.target.state_dict()) if first.method.needs_teacher else None
    ckpt = torch.load(first.last, weights_only=False)  # the model moved away from M_T before the interruption
    for p in ckpt["ema"].parameters():
        p.data += 0.01
    torch.save(ckpt, first.last)
    resumed = AdvAmdTrainer(overrides={"resume": str(first.last)})
    resumed.train()
    rows = results(resumed.save_dir)
    assert len(rows) == 2 and float(rows[-1][f"train/{column}"]) > 0
    assert resumed.args.method == method
    assert resumed.stage is None if method == "distill" else resumed.stage.attack_model == "current"  # no attack
    if teacher is not None:  # the teacher is M_T, restored on resume, not the model at the interruption
        assert all(torch.equal(v, teacher[k]) for k, v in resumed.target.state_dict().items())
    if method == "distill":  # its class logits started at T times the teacher's, once: not again on resume
        student, own = (m.model[-1].cv3[0][-1].bias.norm() for m in (resumed.model, resumed.target))
        assert 0.9 < student / own / resumed.args.temperature < 1.1
    stock = export_model(str(resumed.best), format="pt")
    assert not [g for g in pickled_globals(stock) if g.startswith("yolo_advamd")]
    table = validate_advamd(stock, tiny_data, attacks="fgsm,pgd", eps=0.01, imgsz=64, project=str(tmp_path), name="val")
    assert table["rows"][0]["stats"]["benign"]["metrics/mAP50-95(B)"] >= 0
    assert {"fgsm eps=0.01", "pgd eps=0.01"} <= set(table["rows"][0]["stats"])  # the deployed model attacked
