"""The method registry: every method declared once, found by name, nothing else branching on names."""

import re
from pathlib import Path

import pytest
import torch

from bearrec import methods
from bearrec.config import BearConfig, LossConfig, to_dict
from bearrec.losses import Allowed, bear_loss, msl_loss, sft_loss

SRC = Path(methods.__file__).resolve().parents[1]


def test_every_method_is_registered_with_valid_declarations():
    assert set(methods.NAMES) == {"sft", "msl", "bear", "beam_sim", "dpo", "sdpo", "sdpo_bear", "sasrec", "cft", "d2lr",
                                  "igd", "rosepo", "sprec"}
    for m in methods.REGISTRY.values():
        assert set(m.sections) <= {"tau", "bear", "pref", "sasrec", "cft", "d2lr", "igd", "rosepo", "sprec"}
        assert set(m.needs) <= set(methods.NEEDS)
        assert m.summary and callable(m.parts)
        assert ("preference" in m.needs) == (m.num_negatives is not None)
    with pytest.raises(ValueError, match="loss.name 'ppo' unknown; choose one of .*sdpo_bear"):
        methods.get("ppo")


def test_the_registry_computes_the_pure_losses():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 5.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    targets, allowed = torch.tensor([1, 0, 1]), Allowed.from_lists([[0, 1, 2], [0, 1, 2, 3], [0, 1]])
    bear = BearConfig(num_beams=3, lam=4.0, xi=0.25)
    assert float(methods.loss(logits, targets, allowed, LossConfig(name="sft"))) == pytest.approx(
        float(sft_loss(logits, targets)))
    assert float(methods.loss(logits, targets, allowed, LossConfig(name="msl", tau=2.0))) == pytest.approx(
        float(msl_loss(logits, targets, allowed, tau=2.0)))
    assert float(methods.loss(logits, targets, allowed, LossConfig(name="bear", bear=bear))) == pytest.approx(
        float(bear_loss(logits, targets, allowed, num_beams=3, lam=4.0, xi=0.25, short_sets="min_valid")))
    with pytest.raises(ValueError, match="beam_sim needs thresholds"):
        methods.loss(logits, targets, allowed, LossConfig(name="beam_sim"))


def test_labels_and_descriptions_come_from_the_method():
    loss = {"name": "bear", "tau": 1.0, "bear": {"base": "sft", "num_beams": 10, "lam": 1.0, "xi": 1.0,
                                                 "form": "violators", "short_sets": "auto"}}
    assert methods.get("bear").row_label(loss) == "bear-violators(sft)"
    assert "lam=1.0" in methods.get("bear").description(loss)
    assert methods.get("sdpo").row_label({"name": "sdpo"}) == "sdpo"
    assert methods.get("dpo").num_negatives(LossConfig()) == 1 and methods.get("sdpo").num_negatives(LossConfig()) == 3
    loss = to_dict(LossConfig())
    assert methods.get("d2lr").row_label(loss) == "d2lr-reconstructed" and "reconstructed" in methods.get(
        "d2lr").description(loss)
    assert methods.get("igd").row_label(loss) == "igd-tuning" and "decoding rule only where decode.preset is igd" \
        in methods.get("igd").description(loss)
    assert methods.get("rosepo").row_label(loss) == "rosepo-reconstructed"
    assert "eps=0.1" in methods.get("rosepo").description(loss) and "self+popular" in methods.get(
        "rosepo").description(loss)
    assert methods.get("rosepo").num_negatives(LossConfig()) == 2 and "preference" in methods.get("rosepo").needs
    assert methods.get("cft").row_label(loss) == "cft" and "alpha=0.1" in methods.get("cft").description(loss)


def test_baselines_declare_their_inputs_and_sections():
    assert methods.get("cft").needs == ("plain_prompt",) and methods.get("cft").sections == ("cft",)
    assert methods.get("d2lr").needs == methods.get("igd").needs == ("target_counts",)
    with pytest.raises(ValueError, match="cft needs plain_prompt"):
        methods.loss(torch.zeros(1, 2), torch.tensor([0]), Allowed.from_lists([[0]]), LossConfig(name="cft"))


def test_no_module_outside_the_registry_branches_on_a_method_name():
    names = "|".join(methods.NAMES)
    branch = re.compile(rf'name\s*(==|!=|in)\s*[(\[{{]?\s*"({names})"')
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if "methods" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert offenders == []
