"""Network building blocks for AdvAmd: the auxiliary (dual) batch normalization."""

from yolo_advamd.nn.dual_bn import (
    DualBatchNorm2d,
    DualSyncBatchNorm,
    aux_bn,
    convert_dual_bn,
    dual_bn_overhead,
    has_dual_bn,
    strip_aux_bn,
)

__all__ = (
    "DualBatchNorm2d",
    "DualSyncBatchNorm",
    "aux_bn",
    "convert_dual_bn",
    "dual_bn_overhead",
    "has_dual_bn",
    "strip_aux_bn",
)
