"""The dev study's candidate names keep the meaning they had when their round ran (scripts/recovery_round2.py), so a
round re-run later reproduces its rows even after the defaults moved on."""

import importlib.util
from pathlib import Path

from finemix_core.config import RecoveryConfig


def _candidates() -> dict:
    path = Path(__file__).resolve().parents[1] / "scripts" / "recovery_round2.py"
    spec = importlib.util.spec_from_file_location("recovery_round2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CANDIDATES


def test_earlier_rounds_candidates_do_not_follow_later_defaults():
    cands = _candidates()
    both = cands["+ both"][2]
    assert both.found_rho is None and both.precision == "fp32"  # round 2's low-ρ default, as it ran
    assert cands["round-1 default"][2].consistency is False and cands["round-1 default"][2].precision == "fp32"
    r19 = cands["+ both, --found-rho 1, pieces"][2]
    assert (r19.found_rho, r19.found_steps, r19.precision) == (1.0, 1.0, "fp32")  # Round 19: full steps, float32
    r20 = cands["+ both, found ρ at half the steps"][2]
    assert (r20.found_steps, r20.precision) == (0.5, "fp32")  # Round 20: half steps, float32
    # Round 21's candidate: Round 24's default without the feature term
    assert cands["+ default, bf16 recovery"][2] == RecoveryConfig(
        feature_weight=0.0, found_features=True, precision="bf16", found_unrelated=True, match_dev=False
    )
    # Round 22's candidate is Round 21's default with θ_FT's top two layers kept whole (not adopted: docs/recovery.md)
    assert cands["+ default, top 2 layers whole"][2] == RecoveryConfig(
        whole_top_layers=2, feature_weight=0.0, found_features=True, precision="bf16", found_unrelated=True, match_dev=False
    )
    # Round 23's candidate is Round 21's default whose every recovery fine-tune also matches θ_FT's [CLS] states
    assert cands["+ default, features 5"][2] == RecoveryConfig(
        feature_weight=5.0, found_features=True, precision="bf16", found_unrelated=True, match_dev=False
    )
    # Round 24's: the same with the feature term in the low-ρ search only
    # (today's default where the machine has native bf16: "auto" is bf16 there, and the rounds ran in bf16)
    assert cands["+ default, features 5 below ρ 1"][2] == RecoveryConfig(precision="bf16", found_unrelated=True, match_dev=False)
    # Round 25's: the same at feature weight 10
    assert cands["+ default, features 10 below ρ 1"][2] == RecoveryConfig(
        feature_weight=10.0, precision="bf16", found_unrelated=True, match_dev=False
    )
    # Round 25 paired in fp32 (a CPU without native bf16): today's default as "auto" runs it there, and the candidate
    assert cands["+ default, fp32"][2] == RecoveryConfig(precision="fp32", found_unrelated=True, match_dev=False)
    assert cands["+ default, fp32, features 10 below ρ 1"][2] == RecoveryConfig(
        feature_weight=10.0, precision="fp32", found_unrelated=True, match_dev=False
    )
    # Round 26's: today's default in fp32, the found-ρ check leaving out fired triggers unrelated to the suspects
    assert cands["+ default, fp32, unrelated left out"][2] == RecoveryConfig(precision="fp32", match_dev=False)
    # Round 27's runs: Round 26's default as `auto` runs it; the round's candidate (the dev-text decision match, today's
    # default since) was applied afterwards to these runs' saved models, so no candidate here has it on
    assert cands["+ default, Round 26"][2] == RecoveryConfig(match_dev=False)
    assert cands["+ default, Round 27"][2] == RecoveryConfig()  # today's default
    assert not any(rec.match_dev for name, (_, _, rec) in cands.items() if name != "+ default, Round 27")
    bf16 = {"+ default, bf16 recovery", "+ default, top 2 layers whole", "+ default, features 5",
            "+ default, features 5 below ρ 1", "+ default, features 10 below ρ 1"}
    assert all(rec.precision == "fp32" for name, (_, _, rec) in cands.items() if name not in bf16 | {"+ default, Round 26", "+ default, Round 27"})
