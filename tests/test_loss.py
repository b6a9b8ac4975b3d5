"""ViewLoss: each view's loss is Ultralytics' own detection loss, scaled by its β, weighted by Ā in the chosen scope."""

import pytest
import torch
import torch.nn.functional as F
from helpers import boxes_batch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_advamd.loss import ViewLoss
from yolo_advamd.views import View

NC = 10


@pytest.fixture(scope="module")
def setup():
    """A yolov8n in train mode, its predictions on a batch with boxes of several classes, and a non-uniform Ā."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False).train()
    model.args = get_cfg()
    batch = boxes_batch(1)
    with torch.no_grad():
        preds = model(batch["img"])
    return model, batch, preds, torch.linspace(0.2, 1.8, NC)


def stock(model, preds, batch, class_weights=None):
    """Ultralytics' criterion, optionally with its own per-class weights (1, 1, nc); returns (loss, assignment)."""
    criterion = model.init_criterion()
    criterion.class_weights = class_weights
    assigner, seen = criterion.assigner, []
    criterion.assigner = lambda *a, **k: seen.append(assigner(*a, **k)) or seen[-1]
    loss, _ = criterion(preds, batch)
    return loss, seen[0]


def view_loss(model, preds, batch, **view):
    """ViewLoss on the adversarial view batch with the given `View` settings (none: a plain batch)."""
    view = View("adv", "adv_loss", **{"loss_scale": 1.0, **view}) if view else None
    return ViewLoss(model.init_criterion())(preds, {**batch, "view": view} if view else batch)[0]


def test_positive_scope_weights_only_each_foreground_anchors_assigned_class(setup):
    model, batch, preds, abar = setup
    ours = view_loss(model, preds, batch, class_weights=abar, abar_scope="positive")
    plain, (labels, _, target_scores, fg, _) = stock(model, preds, batch)
    assert fg.sum() > 0 and labels[fg].unique().numel() > 1  # several classes among the positives
    weights = torch.ones_like(target_scores)
    b, a = fg.nonzero(as_tuple=True)
    weights[b, a, labels[b, a].long()] = abar[labels[b, a].long()]
    bce = F.binary_cross_entropy_with_logits(preds["scores"].permute(0, 2, 1), target_scores, reduction="none")
    cls = (bce * weights).sum() / target_scores.sum().clamp(min=1) * model.args.cls * len(batch["img"])
    assert torch.allclose(ours[1], cls, rtol=1e-6)
    assert torch.equal(ours[[0, 2]], plain[[0, 2]])  # box and dfl untouched
    everywhere = view_loss(model, preds, batch, class_weights=abar, abar_scope="all")
    assert not torch.allclose(everywhere[1], ours[1])  # the two scopes differ


def test_positive_scope_with_unit_weights_is_the_unweighted_loss(setup):
    model, batch, preds, _ = setup
    ours = view_loss(model, preds, batch, class_weights=torch.ones(NC), abar_scope="positive")
    assert torch.equal(ours, stock(model, preds, batch)[0])


def test_all_scope_is_ultralytics_class_weights_bit_for_bit(setup):
    model, batch, preds, abar = setup
    ours = view_loss(model, preds, batch, class_weights=abar, abar_scope="all")
    assert torch.equal(ours, stock(model, preds, batch, class_weights=abar.view(1, 1, -1))[0])


def test_loss_scale_multiplies_the_view_loss_and_plain_batches_are_stock(setup):
    model, batch, preds, _ = setup
    plain = stock(model, preds, batch)[0]
    assert torch.equal(view_loss(model, preds, batch), plain)  # a validator's batch: the stock loss
    assert torch.equal(view_loss(model, preds, batch, loss_scale=0.5), plain * 0.5)
