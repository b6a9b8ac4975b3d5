"""Adversarial Amendment (Yu, Chen and Gan, IJCAI 2023): benign, mediate and adversarial views."""

from yolo_advamd.methods.base import Method


class AdvAmd(Method):
    """AdvAmd: the benign and mediate views (x + φδ) through the main BN, the adversarial view (x + δ) through the
    auxiliary BN with its classification loss weighted by Ā (paper eq. 6-7). Its switches (`mediate`, `aux_bn`,
    `advamd_loss`) combine freely: the paper's ablations (Table 3)."""

    name = "advamd"
    about = (
        "benign + mediate views (main BN) + adversarial view (auxiliary BN, classification loss weighted by "
        "A-bar); Yu, Chen and Gan, IJCAI 2023; hyps/advamd-fgsm.yaml, -pgd, -deepfool"
    )
