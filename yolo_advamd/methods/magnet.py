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
    attacks = False
    start_role = "trains a defense for a trained model"

    @classmethod
    def trainer(cls, task: str) -> type:
        """Return the trainer of MagNet's autoencoder for the task's dataset."""
        from yolo_advamd.magnet import TRAINERS

        return TRAINERS[task]
