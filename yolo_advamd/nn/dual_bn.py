"""Auxiliary batch normalization: a second BN beside every BN, used only by adversarial samples (paper section 4).

The main (benign) BN keeps its own parameters, buffers and state-dict keys; its auxiliary twin lives in an `aux` child
(keys `*.aux.*`), as in AdvProp's auxiliary BN and timm's `SplitBatchNorm2d`. Routing is explicit and per model:
inside `with aux_bn(model):` every dual BN of `model` normalizes with its auxiliary BN, outside it with the main BN.
`strip_aux_bn` gives back a stock model for validation, checkpoints to share and export.

Examples:
    >>> model = convert_dual_bn(DetectionModel("yolov8n.yaml"))
    >>> preds = model(img)  # main BN, exactly as before the conversion
    >>> with aux_bn(model):
    ...     preds_adv = model(img_adv)  # auxiliary BN; the convolutions are shared
    >>> strip_aux_bn(model)  # plain BatchNorm2d again, holding the main BN's values bit for bit
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _DualNorm:
    """Run the `aux` child instead of the BN itself while the module's `use_aux` flag is set (see `aux_bn`)."""

    _base: type[nn.modules.batchnorm._BatchNorm]  # the stock class, for the `aux` child and for `strip_aux_bn`

    def __init__(self, *args, **kwargs):
        """Build the main BN and an identical auxiliary BN from the stock class's arguments, routed to the main BN."""
        super().__init__(*args, **kwargs)
        self.aux = self._base(*args, **kwargs)
        self.use_aux = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize `x` with the auxiliary BN when routed to it, else with the main BN (the stock forward).

        The auxiliary BN uses the main BN's `eps` and `momentum`, whatever set them last (e.g. Ultralytics'
        `initialize_weights`, which reaches the plain `aux` child but not the dual BN itself).
        """
        if not self.use_aux:
            return super().forward(x)
        if (self.aux.eps, self.aux.momentum) != (self.eps, self.momentum):
            self.aux.eps, self.aux.momentum = self.eps, self.momentum
        return self.aux(x)


class DualBatchNorm2d(_DualNorm, nn.BatchNorm2d):
    """A BatchNorm2d whose own parameters and buffers are the main BN, with an auxiliary BatchNorm2d in `aux`.

    Attributes:
        aux (nn.BatchNorm2d): The auxiliary BN, same shape and settings, used while `use_aux` is True.
        use_aux (bool): Routing flag, set and restored by `aux_bn(model)`; False means the main BN.
    """

    _base = nn.BatchNorm2d


class DualSyncBatchNorm(_DualNorm, nn.SyncBatchNorm):
    """A SyncBatchNorm whose own parameters and buffers are the main BN, with an auxiliary SyncBatchNorm in `aux`.

    Both BNs synchronize their batch statistics across the same process group under DDP.

    Attributes:
        aux (nn.SyncBatchNorm): The auxiliary BN, same shape, settings and process group, used while `use_aux` is True.
        use_aux (bool): Routing flag, set and restored by `aux_bn(model)`; False means the main BN.
    """

    _base = nn.SyncBatchNorm


_DUAL = {nn.BatchNorm2d: DualBatchNorm2d, nn.SyncBatchNorm: DualSyncBatchNorm}
torch.serialization.add_safe_globals(list(_DUAL.values()))  # dual checkpoints load under ULTRALYTICS_SAFE_LOAD=1


def _copy_bn(bn: nn.Module) -> nn.Module:
    """Return a BN of the class and settings of `bn` holding copies of its tensors (dtype, device, requires_grad)."""
    kwargs = {"process_group": bn.process_group} if isinstance(bn, nn.SyncBatchNorm) else {}
    copy = type(bn)(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **kwargs)
    with torch.no_grad():
        for name, p in bn._parameters.items():
            setattr(copy, name, None if p is None else nn.Parameter(p.clone(), requires_grad=p.requires_grad))
        for name, b in bn._buffers.items():
            setattr(copy, name, None if b is None else b.clone())
    return copy.train(bn.training)


def convert_dual_bn(model: nn.Module) -> nn.Module:
    """Give every `nn.BatchNorm2d` and `nn.SyncBatchNorm` of `model` an auxiliary BN, in place.

    Each BN becomes a `DualBatchNorm2d` (`DualSyncBatchNorm`) by a change of class, as `torch.nn.utils.parametrize`
    does, so the module keeps its identity, parameters, buffers, `eps`, `momentum`, hooks and the attributes
    Ultralytics sets on layers (`i`, `f`, `type`): state-dict keys and benign outputs do not change. Its new `aux`
    child is an exact copy (values, running statistics, `eps`, `momentum`, dtype, device, `requires_grad`). Modules
    already converted are left alone, so converting twice changes nothing. A BN that already holds an `aux` BN of its
    own class, which is what `nn.SyncBatchNorm.convert_sync_batchnorm` makes of a dual BN, keeps that `aux` and its
    trained values. Other norms (`BatchNorm1d`, `BatchNorm3d`, BN subclasses) are left unchanged.

    Ultralytics' `initialize_weights` (run in the model constructors) sets `eps=1e-3, momentum=0.03` only where
    `type(m) is nn.BatchNorm2d`, so it skips converted modules (as it skips any BN subclass): convert after building
    the model, as the values are then carried over to both BNs. Either way the auxiliary BN runs with the main BN's
    `eps` and `momentum`, so the two never differ in those.

    Args:
        model (nn.Module): Any model, e.g. an Ultralytics `DetectionModel`, `SegmentationModel` or
            `ClassificationModel`, or a single BN; convert before wrapping it in DDP, `torch.compile` or `ModelEMA`.

    Returns:
        (nn.Module): `model`, converted.
    """
    dual = _DUAL.get(type(model))
    if dual is not None:
        aux = model._modules.get("aux")
        model.aux = aux if type(aux) is type(model) else _copy_bn(model)
        model.use_aux = False
        model.__class__ = dual
    elif not isinstance(model, _DualNorm):
        for child in model.children():
            convert_dual_bn(child)
    return model


def strip_aux_bn(model: nn.Module) -> nn.Module:
    """Drop every auxiliary BN of `model` in place: each dual BN becomes its stock class holding the main BN's values.

    The inverse of `convert_dual_bn`: `strip_aux_bn(convert_dual_bn(m))` has the state dict and module types of `m`.

    Args:
        model (nn.Module): A model converted by `convert_dual_bn`, or any model (then nothing changes).

    Returns:
        (nn.Module): `model`, with plain `nn.BatchNorm2d` / `nn.SyncBatchNorm` modules.
    """
    for m in list(model.modules()):
        if isinstance(m, _DualNorm):
            del m.aux, m.use_aux
            m.__class__ = m._base
    return model


def has_dual_bn(model: nn.Module) -> bool:
    """Return whether `model` has at least one dual BN that `aux_bn` can route."""
    return any(isinstance(m, _DualNorm) for m in model.modules())


@contextlib.contextmanager
def aux_bn(model: nn.Module) -> Iterator[nn.Module]:
    """Route every forward pass of `model` through its auxiliary BNs inside the `with` block.

    The routing is a flag on each dual BN of `model` (no global state, no hooks, so other models are not affected and
    the model still pickles), restored on exit even when the block raises. Blocks nest. A model shared between threads
    is routed for all of them. Backward passes need no routing: they follow the graph the forward pass recorded.

    Args:
        model (nn.Module): A model converted by `convert_dual_bn`; a DDP, `torch.compile` or `ModelEMA.ema` wrapper of
            it works too, as the flags are set on its submodules.

    Yields:
        (nn.Module): `model`.

    Examples:
        >>> with aux_bn(model):
        ...     loss_adv = criterion(model(img_adv), targets)
        >>> loss_adv.backward()  # reaches the auxiliary BNs' affine parameters and the shared convolutions
    """
    duals = [m for m in model.modules() if isinstance(m, _DualNorm)]
    if not duals:
        raise ValueError(
            f"aux_bn(model): this {type(model).__name__} has no auxiliary BN to route to; call convert_dual_bn(model) "
            "first (after nn.SyncBatchNorm.convert_sync_batchnorm, call it again to restore the auxiliary BNs)"
        )
    previous = [m.use_aux for m in duals]
    for m in duals:
        m.use_aux = True
    try:
        yield model
    finally:
        for m, flag in zip(duals, previous):
            m.use_aux = flag


def dual_bn_overhead(model: nn.Module) -> dict[str, int | float]:
    """Return what the auxiliary BNs of `model` add, in elements and as fractions of the model without them.

    Args:
        model (nn.Module): A model converted by `convert_dual_bn`.

    Returns:
        (dict): `layers` (dual BNs), `parameters` and `buffers` added (elements), `parameters_fraction` (added
            parameters / parameters of the stripped model) and `size_fraction` (added parameters and buffers /
            parameters and buffers of the stripped model).
    """
    aux = [m.aux for m in model.modules() if isinstance(m, _DualNorm)]
    params = sum(p.numel() for a in aux for p in a.parameters())
    buffers = sum(b.numel() for a in aux for b in a.buffers())
    base_params = sum(p.numel() for p in model.parameters()) - params
    base_size = base_params + sum(b.numel() for b in model.buffers()) - buffers
    return {
        "layers": len(aux),
        "parameters": params,
        "buffers": buffers,
        "parameters_fraction": params / max(base_params, 1),
        "size_fraction": (params + buffers) / max(base_size, 1),
    }
