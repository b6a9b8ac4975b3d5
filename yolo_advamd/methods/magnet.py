"""MagNet (Meng and Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017)."""

from yolo_advamd.methods.base import Method


class MagNet(Method):
    """MagNet: an autoencoder trained on the benign training images beside a frozen model (`yolo_advamd.magnet`); at use
    it rejects images it reconstructs badly (detector) and feeds the model the reconstruction of the others (reformer).

    The model's weights are not trained: the run writes the autoencoder's checkpoint, which `val_advamd.py defense=`
    and `export.py defense=` take beside the model.
    """

    name = "magnet"
    about = (
        "an autoencoder of the benign training images beside the frozen model: rejects badly reconstructed images, "
        "feeds the model the reconstruction; Meng and Chen, CCS 2017; hyps/magnet.yaml (model= must be a .pt)"
    )
    amends = False

    @classmethod
    def check_start(cls, overrides: dict) -> None:
        """Refuse a run without a model to defend: `model=` is not a checkpoint (and the run is not resumed)."""
        if not str(overrides.get("model", "")).endswith(".pt") and not overrides.get("resume"):
            raise ValueError(
                f"method=magnet trains a defense for a trained model and model={overrides.get('model')} is none: pass "
                "its checkpoint, e.g. model=runs/detect/train/weights/best.pt"
            )

    @classmethod
    def trainer(cls, task: str) -> type:
        """Return the trainer of MagNet's autoencoder for the task's dataset."""
        from yolo_advamd.magnet import TRAINERS

        return TRAINERS[task]
