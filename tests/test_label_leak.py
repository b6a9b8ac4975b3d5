"""benchmarks/label_leak.py: the attack sees every object's class moved to the next one, the scoring the true one."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import yolo_advamd.validate as validate
import yolo_advamd.validators as validators

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_leak  # noqa: E402


def test_the_attack_is_made_with_the_next_class_and_the_batch_keeps_the_true_one(monkeypatch):
    seen = []

    def fake_attack_batch(attack, model, batch, terms):
        seen.append(batch["cls"].clone())
        return SimpleNamespace(delta=torch.full_like(batch["img"], 0.01)), None

    monkeypatch.setattr(validators, "attack_batch", fake_attack_batch)
    attack = SimpleNamespace(clip=(0.0, 1.0))
    validator = label_leak.ShiftedLabelValidator(args={"task": "detect"}, attack=attack, attack_model=nn.Identity())
    validator.data = {"names": {0: "a", 1: "b", 2: "c"}}
    batch = {"img": torch.zeros(2, 3, 8, 8), "cls": torch.tensor([[0.0], [2.0], [1.0]])}
    adv = validator.adversarial(batch)
    assert seen[0].flatten().tolist() == [1.0, 0.0, 2.0]  # k -> k + 1 mod nc
    assert batch["cls"].flatten().tolist() == [0.0, 2.0, 1.0]  # scored against the true labels
    assert torch.allclose(adv, torch.full_like(adv, 0.01))


def test_shifted_labels_validates_detectors_with_the_shifted_attack_only_inside_the_block():
    stock = validate.VALIDATORS
    with pytest.raises(KeyboardInterrupt), label_leak.shifted_labels():
        assert validate.VALIDATORS["detect"] is label_leak.ShiftedLabelValidator
        assert validate.VALIDATORS["segment"] is stock["segment"]  # other tasks keep theirs
        raise KeyboardInterrupt  # a run stopped inside the block leaves validation as it was
    assert validate.VALIDATORS is stock
