"""Adv-Train, the paper's baseline defense: AdvAmd with every amendment off."""

from yolo_advamd.methods.base import Method


class AdvTrain(Method):
    """Adv-Train: the benign and the adversarial views through the shared BN, unweighted losses."""

    name = "advtrain"
    about = "benign + adversarial views, shared BN, unweighted loss: the paper's Adv-Train baseline; hyps/advtrain.yaml"
    fixed = {"mediate": False, "aux_bn": False, "advamd_loss": False}
