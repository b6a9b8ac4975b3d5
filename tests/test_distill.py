"""Defensive distillation (`method=distill`): its loss is the hand computation, it trains every task offline from the
command line without an attack, resumes with its teacher, exports a stock model and refuses what it cannot use."""

import math
import subprocess
import sys
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import boxes_batch, results
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel
from ultralytics.utils import YAML

from yolo_advamd.cfg import resolve_advamd_cfg
from yolo_advamd.checkpoint import freeze_target
from yolo_advamd.distill import SoftTargets, class_logits, soft_cross_entropy, teacher_logits
from yolo_advamd.loss import ViewLoss, wrap_criterion
from yolo_advamd.methods import METHODS
from yolo_advamd.step import ViewGuard, advamd_step
from yolo_advamd.views import View

ROOT = Path(__file__).resolve().parents[1]
NC = 10


def bce(x: float, p: float) -> float:
    """Binary cross-entropy of a logit `x` against a probability `p`, written out."""
    s = 1 / (1 + math.exp(-x))
    return -(p * math.log(s) + (1 - p) * math.log(1 - s))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_soft_targets_on_a_two_element_example_is_the_hand_computation():
    """z_S = (2, -1), z_T = (0, 3), target scores (0.8, 0.7), T = 2, hard = 0.25, cls gain 0.5."""
    pred, teacher, target = torch.tensor([[[2.0, -1.0]]]), torch.tensor([[[0.0, 3.0]]]), torch.tensor([[[0.8, 0.7]]])
    soft = SoftTargets(teacher, temperature=2.0, hard=0.25, gain=0.5)
    out = soft(pred, target)
    s = [4 * bce(1.0, 0.5), 4 * bce(-0.5, sigmoid(3.0))]  # T² BCE(z_S / T, sigmoid(z_T)): the teacher at its own T
    h = [bce(2.0, 0.8), bce(-1.0, 0.7)]
    assert torch.allclose(out, torch.tensor([[[0.75 * s[0] + 0.25 * h[0], 0.75 * s[1] + 0.25 * h[1]]]]), rtol=1e-6)
    assert soft.items["soft_loss"].item() == pytest.approx(sum(s) / 1.5 * 0.5, rel=1e-6)  # normalized as YOLO's
    assert soft.items["cls_loss"].item() == pytest.approx(sum(h) / 1.5 * 0.5, rel=1e-6)


def test_soft_cross_entropy_of_a_classifier_is_the_hand_computation():
    """Two images, three classes, T = 3, hard = 0.4: T² CE(softmax(z_T), z_S / T) and the true-class CE."""
    z = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    zt = torch.tensor([[0.0, 3.0, -3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([1, 2])
    loss, items = soft_cross_entropy(z, zt, labels, temperature=3.0, hard=0.4)

    def log_softmax(row):
        m = math.log(sum(math.exp(v) for v in row))
        return [v - m for v in row]

    soft = hard = 0.0
    for s, t, y in zip(z.tolist(), zt.tolist(), labels.tolist()):
        p = [math.exp(v) for v in log_softmax(t)]
        soft -= 9 * sum(pi * li for pi, li in zip(p, log_softmax([v / 3 for v in s]))) / 2
        hard -= log_softmax(s)[y] / 2
    assert loss.item() == pytest.approx(0.6 * soft + 0.4 * hard, rel=1e-6)
    assert (items["soft_loss"].item(), items["loss"].item()) == (pytest.approx(soft), pytest.approx(hard))


@pytest.fixture(scope="module")
def detector():
    """A yolov8n in train mode, a teacher with other weights (eval mode), a batch with boxes, the student's output."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False).train()
    model.args = get_cfg()
    teacher = deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = boxes_batch(1)
    with torch.no_grad():
        preds = model(batch["img"])
    return model, freeze_target(teacher), batch, preds


def assigned_scores(model, preds, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' stock loss and the target scores its assigner gives (B, anchors, nc)."""
    criterion = model.init_criterion()
    assigner, seen = criterion.assigner, []
    criterion.assigner = lambda *a, **k: seen.append(assigner(*a, **k)) or seen[-1]
    loss, _ = criterion(preds, batch)
    return loss, seen[0][2]


def distilled(model, preds, batch, teacher, temperature, hard):
    view = View("benign", "", 1.0, distill={"teacher": teacher, "temperature": temperature, "hard": hard})
    return ViewLoss(model.init_criterion())(preds, {**batch, "view": view})


def test_detection_class_term_is_the_soft_bce_over_every_anchor_and_box_and_dfl_are_stock(detector):
    model, teacher, batch, preds = detector
    zt = teacher_logits(teacher, batch)
    assert len(zt) == 1 and zt[0].shape == (2, preds["scores"].shape[2], NC)  # (B, anchors, nc) from eval mode
    loss, items = distilled(model, preds, batch, zt, temperature=5.0, hard=0.2)
    stock, target = assigned_scores(model, preds, batch)
    z = preds["scores"].permute(0, 2, 1)
    p = zt[0].sigmoid()
    soft = -25 * (p * F.logsigmoid(z / 5) + (1 - p) * F.logsigmoid(-z / 5)).sum()
    hard = -(target * F.logsigmoid(z) + (1 - target) * F.logsigmoid(-z)).sum()
    scale = model.args.cls / target.sum().clamp(min=1) * 2  # YOLO's normalization, cls gain and batch size
    assert torch.allclose(loss[1], (0.8 * soft + 0.2 * hard) * scale, rtol=1e-5)
    assert torch.equal(loss[[0, 2]], stock[[0, 2]])  # box and DFL on the ground truth, as stock
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "soft_loss"]
    assert items["soft_loss"] == pytest.approx(float(soft * scale / 2), rel=1e-5)
    assert items["cls_loss"] == pytest.approx(float(stock[1] / 2), rel=1e-5)  # the ground-truth term, as val logs it


def test_at_t_1_with_the_teacher_equal_to_the_student_the_class_term_is_bce_against_the_teachers_scores(detector):
    model, _, batch, preds = detector
    own = class_logits(preds)
    loss, _ = distilled(model, preds, batch, own, temperature=1.0, hard=0.0)
    _, target = assigned_scores(model, preds, batch)
    scores = own[0].sigmoid()
    bce = F.binary_cross_entropy(scores, scores, reduction="sum")  # on probabilities: another code path
    assert torch.allclose(loss[1], bce / target.sum().clamp(min=1) * model.args.cls * 2, rtol=1e-5)


def test_distill_step_attacks_nothing_and_trains_the_benign_view_on_the_teachers_soft_targets(detector):
    """The step as the trainer runs it: no attack stage, one view (the loop's), its loss the distillation loss."""
    _, _, batch, _ = detector
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    model.args = SimpleNamespace(**{**vars(get_cfg()), **resolve_advamd_cfg({"method": "distill", "temperature": 4})})
    run = METHODS["distill"](model.args)
    assert not run.attacks and run.needs_target() and run.columns() == ("soft_loss",)
    run.setup(freeze_target(model))
    module = wrap_criterion(model).train()
    ViewGuard(module)
    backwarded = []
    view = advamd_step(module, module, batch, None, run, None, backwarded.append)
    assert backwarded == [] and view["view"].name == "benign" and "img_adv" not in view  # the loop trains it
    loss, items = module(view)
    hand, _ = distilled(module, module.predict(batch["img"]), batch, teacher_logits(run.teacher, batch), 4.0, 0.0)
    assert torch.allclose(loss, hand, rtol=1e-5) and "soft_loss" in items


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8n-seg.yaml", "yolo26n.yaml", "yolov8n-cls.yaml"])
def test_the_student_starts_at_the_soft_terms_optimum_with_t_times_the_teachers_class_logits(cfg):
    """A new run's student: its class logits T times the teacher's (every branch of the head, an end-to-end one's
    too), everything else its own, so the soft term's gradient is zero at the start."""
    torch.manual_seed(0)
    kind = ClassificationModel if "cls" in cfg else SegmentationModel if "seg" in cfg else DetectionModel
    model = kind(cfg, nc=NC, verbose=False).train()
    img = torch.rand(2, 3, 64, 64)
    teacher = deepcopy(model)
    run = METHODS["distill"](SimpleNamespace(**resolve_advamd_cfg({"method": "distill", "temperature": 7})))
    run.start([model])
    with torch.no_grad():
        before, after = teacher(img), model(img)
    for z, zt in zip(class_logits(after), class_logits(before), strict=True):
        assert torch.allclose(z, 7 * zt, rtol=1e-4, atol=1e-4)
    if isinstance(after, dict):  # boxes and masks: the student's own
        for a, b in [(after[k], before[k]) for k in ("one2many", "one2one") if k in after] or [(after, before)]:
            assert all(torch.equal(a[k], b[k]) for k in ("boxes", "mask_coefficient") if k in a)
    pred = class_logits(after)[0].clone().requires_grad_()
    SoftTargets(class_logits(before)[0], 7.0, 0.0, 1.0)(pred, torch.zeros_like(pred)).sum().backward()
    assert pred.grad.abs().max() < 1e-3 * 7  # T * (sigmoid(z_S / T) - sigmoid(z_T)): 0 up to rounding


def test_a_classifiers_distillation_reads_its_eval_mode_logits():
    torch.manual_seed(0)
    model = ClassificationModel("yolov8n-cls.yaml", nc=NC, verbose=False)
    teacher = freeze_target(model)
    img = torch.rand(2, 3, 32, 32)
    zt = teacher_logits(teacher, {"img": img})
    assert len(zt) == 1 and zt[0].shape == (2, NC)
    assert torch.allclose(zt[0].softmax(1), teacher(img)[0])  # the logits, not the probabilities eval mode returns


def test_bad_temperature_and_weight_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"temperature=0 must be a number > 0"):
        resolve_advamd_cfg({"method": "distill", "temperature": 0})
    with pytest.raises(ValueError, match=r"temperature=-2 must be a number > 0"):
        resolve_advamd_cfg({"method": "distill", "temperature": -2})
    with pytest.raises(ValueError, match=r"distill_hard=1.5 is outside \[0, 1\]"):
        resolve_advamd_cfg({"method": "distill", "distill_hard": 1.5})
    with pytest.raises(ValueError, match="aux_bn=True does not fit method=distill"):
        resolve_advamd_cfg({"method": "distill", "aux_bn": True})
    assert resolve_advamd_cfg({"hyp": str(ROOT / "hyps" / "distill.yaml")})["temperature"] == 100


def cli(*args, cwd) -> subprocess.CompletedProcess:
    """Run train_advamd.py with `args` in `cwd`, as a user does."""
    cmd = [sys.executable, str(ROOT / "train_advamd.py"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["model=yolov8n.yaml", "method=distill"],
            "method=distill learns the class scores of a teacher, the starting checkpoint, and model=yolov8n.yaml has "
            "none: pass a trained checkpoint",
        ),
        (["model=yolov8n.yaml", "method=distill", "temperature=0"], "temperature=0 must be a number > 0"),
        (["model=yolov8n.yaml", "hyp=hyps/distill.yaml", "temperature=-1"], "temperature=-1 must be a number > 0"),
    ],
)
def test_cli_refuses_a_yaml_model_and_a_bad_temperature_before_any_work(tmp_path, args, message):
    r = cli(*[a.replace("hyps/", f"{ROOT}/hyps/") for a in args], cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_attack_settings_are_refused_with_distill_before_any_work(tmp_path, digits):
    r = cli(f"model={digits['stock']}", "method=distill", "eps=0.1", f"project={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2 and "eps=0.1 has no effect with method=distill" in r.stderr
    assert not list(tmp_path.iterdir())


def test_help_lists_distill_and_its_settings(tmp_path):
    r = cli("help", cwd=tmp_path)
    assert r.returncode == 0
    assert "  distill    defensive distillation" in r.stdout and "hyps/distill.yaml" in r.stdout
    assert "temperature=100" in r.stdout and "distill_hard=0.0" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "segment", "classify"])
def test_distill_trains_each_task_offline_for_an_epoch_from_the_command_line(tmp_path, digits, fitted_tasks, task):
    """`train_advamd.py model=best.pt method=distill`: no attack, the soft class term logged, a stock checkpoint."""
    from yolo_advamd.export import pickled_globals

    d = {"data": digits["data"], "ckpt": digits["stock"], "imgsz": 64} if task == "detect" else fitted_tasks[task]
    args = [f"model={d['ckpt']}", f"data={d['data']}", f"imgsz={d['imgsz']}", "method=distill", "epochs=1"]
    args += ["batch=8", "workers=0", "plots=False", f"project={tmp_path}", "name=run", "temperature=10"]
    args += ["distill_hard=0.1"]  # a little of the ground truth beside the soft targets
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    row = results(tmp_path / "run")[0]
    benign = {"detect": ["box_loss", "cls_loss", "dfl_loss"], "classify": ["loss"]}
    benign["segment"] = ["box_loss", "seg_loss", "cls_loss", "dfl_loss", "sem_loss"]
    assert [k.removeprefix("train/") for k in row if k.startswith("train/")] == [*benign[task], "soft_loss"]
    assert float(row["train/soft_loss"]) > 0 and not any(k.startswith("val/soft") for k in row)
    assert "A-bar" not in r.stderr + r.stdout  # no attack, no calibration
    saved = YAML.load(tmp_path / "run" / "args.yaml")
    assert (saved["method"], saved["temperature"], saved["distill_hard"]) == ("distill", 10, 0.1)
    best = tmp_path / "run" / "weights" / "best.pt"
    assert not [g for g in pickled_globals(str(best)) if g.startswith("yolo_advamd")]  # the deployed model is stock
