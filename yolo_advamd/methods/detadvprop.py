"""Det-AdvProp (Chen et al., "Robust and Accurate Object Detection via Adversarial Learning", CVPR 2021)."""

from yolo_advamd.methods.base import Method


class DetAdvProp(Method):
    """Det-AdvProp: the benign view, and the adversarial view made and trained through the auxiliary BN.

    What the paper leaves open, and what we took (eq. 3-6 and Algorithm 1): adversarial images from the current model,
    made and trained through the auxiliary BN (every BN has one), clean + adversarial loss 1:1, one adversarial image
    per clean one: the classification or the localization attack, whichever gives the larger detection loss per image
    (`attack_terms=max`). The paper explains the method with FGSM and gives neither the attack's budget nor its steps
    (google/automl holds no training code): FGSM at ε = 1/255, AdvProp's weak regime, is our default. The attack runs
    in train mode, as the training step it belongs to; the localization loss is YOLO's box + DFL.
    """

    name = "detadvprop"
    about = (
        "benign view + the stronger of a classification and a localization attack per image (current model, "
        "made and trained through the auxiliary BN); Chen et al., CVPR 2021; hyps/detadvprop.yaml"
    )
    defaults = {"attack": "fgsm", "eps": 1 / 255, "attack_model": "current", "attack_terms": "max"}
    fixed = {"mediate": False, "aux_bn": True, "advamd_loss": False}
    tasks = ("detect", "segment")

    def attack_aux_bn(self) -> bool:
        """Attack the current model through its auxiliary BNs: the BN the adversarial loss trains (Algorithm 1)."""
        return self.args.attack_model == "current"
