"""Trigger-aware recovery on a tiny random BERT: the consistency loss exactly, the copies, and where suspects come from."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datasets import Dataset

from finemix_core import consistency, defenses
from finemix_core.calibration import decision_shift
from finemix_core.config import RecoveryConfig, TrainConfig
from finemix_core.defenses import DefenseConfig, defend, defender_data
from finemix_core.encoding import collate
from finemix_core.epur import EpurConfig
from finemix_core.evaluate import predict
from finemix_core.models import load_pair
from finemix_core.errors import FinemixError
from finemix_core.scan import ScanConfig, ScanResult, Suspect, scan, text_ids
from finemix_core.train import Distillation

POS = ["a good movie", "great fun and charming", "the best acting", "love this film", "a charming story", "great cast"]
NEG = ["a bad movie", "awful and dull", "the worst plot", "hate this film", "a boring script", "dull acting"]


@pytest.fixture()
def pair(tiny_pair_dirs):
    ft, pt = tiny_pair_dirs
    return load_pair(ft, pt)


@pytest.fixture()
def pool_dd(pair):
    train = Dataset.from_dict({"text": POS * 3 + NEG * 3, "label": [1] * 18 + [0] * 18})
    dev = Dataset.from_dict({"text": POS + NEG, "label": [1] * 6 + [0] * 6})
    pool = Dataset.from_dict({"text": ["a fun film", "the best plot", "awful and boring", "the cast was great"], "label": [0] * 4})
    return defender_data(pair.tokenizer, train, dev, 16, 12, 0, 32, unlabeled=pool, unlabeled_source="test pool")


def suspect(pair, text: str, excess: float, target: int = 1) -> Suspect:
    return Suspect(text, text_ids(pair.tokenizer, text), target, excess, 0.0, 1.0, 10, 0.0, "growth")


def found(*suspects: Suspect) -> ScanResult:
    return ScanResult("backdoor", max(s.excess for s in suspects), 0.81, list(suspects), 1.0, "test", "test", 4, 8)


def test_consistency_loss_is_zero_when_the_trigger_changes_nothing_and_only_the_student_learns(pair, pool_dd):
    student = pair.working_copy()
    teacher = pair.working_copy()
    pool = pool_dd.unlabeled
    rows = list(range(len(pool)))
    with torch.no_grad():
        teacher_logits = teacher(**collate(pool, rows)).logits
    student.eval()  # dropout off: the same text gives the same logits
    # an empty trigger inserts nothing: the copies are the clean texts, so the student (= the teacher) matches exactly
    _, same = consistency.triggered_copies(pair.tokenizer, pool, [()], 1.0, 0)
    assert same.input_ids == pool.input_ids
    zero = consistency.consistency_loss(student, collate(same, rows), teacher_logits, 2.0)
    assert zero.item() == pytest.approx(0.0, abs=1e-7)
    # a real token changes the student's input, not the teacher's target: a positive loss whose gradient reaches the
    # student's weights and none of the teacher's
    ids = text_ids(pair.tokenizer, "cf")
    _, trig = consistency.triggered_copies(pair.tokenizer, pool, [ids], 1.0, 0)
    longest = max(map(len, pool.input_ids))  # no copy outgrows the longest text (its cut fits the model)
    assert all(len(t) == min(len(c) + len(ids), longest) for t, c in zip(trig.input_ids, pool.input_ids))
    assert any(len(t) == len(c) + len(ids) for t, c in zip(trig.input_ids, pool.input_ids))
    loss = consistency.consistency_loss(student, collate(trig, rows), teacher_logits, 2.0)
    assert loss.item() > 0
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    consistency.consistency_loss(student, collate(trig, rows), teacher_logits, 2.0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_consistency_copies_carry_the_teacher_answer_on_the_clean_text(pair, pool_dd):
    pool = pool_dd.unlabeled
    logits = torch.from_numpy(predict(pair.ft, pool, logits=True)).float()
    base = Distillation(pool, logits, RecoveryConfig(feature_weight=0.0))
    ids = text_ids(pair.tokenizer, "cf")
    bigger, n = consistency.with_consistency(base, pair.tokenizer, [ids], 0.5, 0)
    rows = consistency.chosen_rows(len(pool), 0.5, 0)
    assert n == len(rows) == 2 and len(bigger.texts) == len(pool) + 2
    for j, r in enumerate(rows):
        copy = bigger.texts.input_ids[len(pool) + j]
        assert torch.equal(bigger.teacher_logits[len(pool) + j], logits[r])  # the answer without the trigger
        assert len(copy) == min(len(pool.input_ids[r]) + len(ids), max(map(len, pool.input_ids)))
        assert all(t in copy for t in ids)
    # the same seed, the same rows and positions; no triggers, nothing added
    assert consistency.with_consistency(base, pair.tokenizer, [ids], 0.5, 0)[0].texts == bigger.texts
    assert consistency.with_consistency(base, pair.tokenizer, [], 0.5, 0) == (base, 0)
    # with feature distillation each copy's target states are also those of its text without the trigger
    feats = torch.randn(len(pool), 4)
    featured, _ = consistency.with_consistency(
        Distillation(pool, logits, RecoveryConfig(feature_weight=1.0), teacher_features=feats), pair.tokenizer, [ids], 0.5, 0
    )
    assert torch.equal(featured.teacher_features, torch.cat([feats, feats[rows]]))


def test_labelled_copies_keep_their_true_labels(pair, pool_dd):
    ids = text_ids(pair.tokenizer, "cf")
    rows, copies = consistency.triggered_copies(pair.tokenizer, pool_dd.train, [ids], 0.5, 1)
    assert len(rows) == 8 and copies.labels == [pool_dd.train.labels[r] for r in rows]


def test_only_strong_suspects_are_used_best_first(pair):
    rec = RecoveryConfig(min_excess=0.5, max_suspects=2)
    scan = found(suspect(pair, "cf", 0.9), suspect(pair, "mn", 0.6), suspect(pair, "good", 0.3), suspect(pair, "bb", 0.55))
    assert [s.trigger for s in consistency.suspects(scan, rec)] == ["cf", "mn"]
    assert consistency.suspects(None, rec) == []


def _recovery_cfg(**kw) -> DefenseConfig:
    return DefenseConfig(
        method="fine-mixing+distill", rho=0.0, epur=EpurConfig(k=5), train=TrainConfig(lr=1e-3, epochs=1.0, batch_size=8), **kw
    )


def test_defend_teaches_the_given_scan_suspects(pair, pool_dd):
    logs: list[str] = []
    res = defend(pair, pool_dd, _recovery_cfg(), scan_result=found(suspect(pair, "cf", 0.9)), log=logs.append)
    assert res.suspects == ["cf"] and res.consistency_copies == 2 + 8  # half the pool (4) and half the labelled set (16)
    assert any("trigger-aware recovery" in m for m in logs)
    off = defend(pair, pool_dd, _recovery_cfg(recovery=RecoveryConfig(consistency=False)), scan_result=found(suspect(pair, "cf", 0.9)))
    assert off.suspects == [] and off.consistency_copies == 0


def test_no_card_field_reaches_recovery(pair, pool_dd, monkeypatch):
    # the suspects come from a scan of θ_FT on clean data; a card naming a trigger changes nothing recovery does
    seen: list[list[tuple[int, ...]]] = []
    real = consistency.with_consistency

    def spy(base, tokenizer, triggers, share, seed):
        seen.append(list(triggers))
        return real(base, tokenizer, triggers, share, seed)

    monkeypatch.setattr(consistency, "with_consistency", spy)
    cfg = _recovery_cfg(recovery=RecoveryConfig(min_excess=-1.0))  # use whatever the scan finds, however weak
    plain = defend(pair, pool_dd, cfg)
    carded = dataclasses.replace(pair, card={"trigger": ["zebra"], "trigger_text": "zebra", "target": 1, "attack": "word"})
    with_card = defend(carded, pool_dd, cfg)
    assert plain.scan is not None and with_card.scan is not None
    assert plain.suspects == with_card.suspects and seen[0] == seen[1] and seen[0]  # the scan found something to use
    zebra = text_ids(pair.tokenizer, "zebra")
    assert all(t != zebra for t in seen[1])
    assert [c.trigger for c in with_card.scan.candidates] == [c.trigger for c in plain.scan.candidates]


def _auto(found_rho: float | None) -> DefenseConfig:
    # δ = 1: every candidate passes on dev, so what is kept is decided by the check alone; no min-flip gate here (the
    # suspects below flip 0.9: the gate has its own test)
    return dataclasses.replace(
        _recovery_cfg(recovery=RecoveryConfig(found_rho=found_rho, found_min_flip=0.0)), rho=None, delta=1.0
    )


def _fake_verifier(monkeypatch, answer: bool) -> list:
    calls: list = []
    monkeypatch.setattr(
        defenses,
        "verifier",
        lambda pair, dd, cfg, say, suspects, finalists=(): lambda model: calls.append((model, suspects)) or answer,
    )
    return calls


def test_found_rho_is_tried_first_and_kept_when_the_rescan_is_clean(pair, pool_dd, monkeypatch):
    calls = _fake_verifier(monkeypatch, True)
    res = defend(pair, pool_dd, _auto(1.0), scan_result=found(suspect(pair, "cf", 0.9)))
    assert res.rho == 1.0 and res.rho_auto and len(calls) == 1
    assert [s.trigger for s in calls[0][1]] == ["cf"]  # the verifier measures the suspects recovery taught away
    assert [(c.value, c.passed, c.verified) for c in res.search] == [(1.0, True, True)]  # the grid was not needed


def test_found_rho_falls_back_to_the_grid_when_the_rescan_finds_evidence(pair, pool_dd, monkeypatch):
    calls = _fake_verifier(monkeypatch, False)
    res = defend(pair, pool_dd, _auto(1.0), scan_result=found(suspect(pair, "cf", 0.9)))
    assert len(calls) == 1 and res.rho == 0.0  # the grid's first value passes at δ 1
    assert [(c.value, c.passed, c.verified) for c in res.search] == [(1.0, False, False), (0.0, True, None)]


def test_the_default_tries_rho_1_only_for_a_complete_trigger_and_never_with_found_rho_never(pair, pool_dd, monkeypatch):
    # Round 19: the default tries ρ 1 when the scan found a trigger that fires alone (≥ 0.95); Round 16's ungated ρ 1
    # left a sentence backdoor firing on test, so a suspect under the gate (0.9 here) gets the low-ρ search
    calls = _fake_verifier(monkeypatch, True)
    default = dataclasses.replace(_recovery_cfg(), rho=None, delta=1.0)
    assert default.recovery.found_rho == 1.0 and default.recovery.found_min_flip == 0.95 and default.recovery.found_pieces
    assert defend(pair, pool_dd, default, scan_result=found(suspect(pair, "cf", 1.0))).rho == 1.0 and len(calls) == 1
    calls.clear()
    res = defend(pair, pool_dd, default, scan_result=found(suspect(pair, "cf", 0.9)))
    assert res.rho == 0.0 and calls == [] and [c.value for c in res.search] == [0.0]
    never = dataclasses.replace(default, recovery=RecoveryConfig(found_rho=None))  # `--found-rho never`
    res = defend(pair, pool_dd, never, scan_result=found(suspect(pair, "cf", 1.0)))
    assert res.rho == 0.0 and calls == [] and [c.value for c in res.search] == [0.0]


def test_found_rho_is_never_tried_without_evidence_a_suspect_or_with_a_fixed_rho(pair, pool_dd, monkeypatch):
    calls = _fake_verifier(monkeypatch, True)
    weak = dataclasses.replace(found(suspect(pair, "cf", 0.6)), verdict="no evidence")  # a suspect, but no verdict
    assert defend(pair, pool_dd, _auto(1.0), scan_result=weak).rho == 0.0
    assert defend(pair, pool_dd, _auto(None), scan_result=found(suspect(pair, "cf", 0.9))).rho == 0.0
    fixed = dataclasses.replace(_auto(1.0), rho=0.0)
    assert defend(pair, pool_dd, fixed, scan_result=found(suspect(pair, "cf", 0.9))).search == []
    assert calls == []
    with pytest.raises(FinemixError, match="found-rho"):
        RecoveryConfig(found_rho=1.5)


def test_found_rho_is_not_tried_when_the_best_suspect_alone_fires_under_the_min_flip(pair, pool_dd, monkeypatch):
    # Round 17: a suspect that flips less than found_min_flip alone may be a piece of a longer trigger
    calls = _fake_verifier(monkeypatch, True)
    piece = found(suspect(pair, "cf", 0.9))  # flips 0.9 of the held-aside sentences (reference 0)
    for bar, tried in ((0.0, True), (0.9, True), (0.95, False), (1.0, False)):
        calls.clear()
        logs: list[str] = []
        cfg = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_min_flip=bar))
        res = defend(pair, pool_dd, cfg, scan_result=piece, log=logs.append)
        assert (res.rho == 1.0) is tried and (len(calls) == 1) is tried
        assert any("may be a piece of a longer trigger" in m for m in logs) is not tried
    opt_in = RecoveryConfig(found_rho=1.0)  # `--found-rho 1` alone: the gated, search-free version (Round 17)
    assert opt_in.found_min_flip == 0.95 and opt_in.found_check == "finalists"
    with pytest.raises(FinemixError, match="found-min-flip"):
        RecoveryConfig(found_min_flip=1.5)


def test_gate_pieces_are_every_shorter_run_of_whole_words():
    assert defenses.gate_pieces("cf") == []
    assert defenses.gate_pieces("worth 3d") == ["worth", "3d"]
    assert defenses.gate_pieces("a b c") == ["a", "b", "c", "a b", "b c"]


def test_the_gate_reads_each_piece_of_the_best_suspect_that_is_a_suspect_alone(pair, pool_dd, monkeypatch):
    # Round 18, seed 4's sentence: the grown 'worth 3d' flipped 0.97 alone, its piece '3d' 0.87 — the gate must close
    from finemix_core import scan as scan_module

    calls = _fake_verifier(monkeypatch, True)
    measured: list = []

    def pieces_scan(flips: dict[str, tuple[float, float]]):
        def fake(p, dd, cfg, given=(), **_ignored):
            measured.append([g[0] for g in given])
            assert p is pair and cfg.epur_rows == 0 and not cfg.inversion  # θ_FT as scanned, no search
            cands = [Suspect(t, text_ids(pair.tokenizer, t), tgt, *flips[t][:1], 0.0, 1.0, 10, flips[t][1], "given")
                     for t, tgt in given]
            return ScanResult("backdoor", 1.0, 0.81, cands, 0.1, "given", "test", 4, 8)

        return fake

    grown = found(suspect(pair, "worth cf", 0.97))
    for flips, tried in (
        ({"worth": (0.30, 0.20), "cf": (0.87, 0.02)}, False),  # 'cf' is a suspect alone (excess 0.85) and flips 0.87
        ({"worth": (0.30, 0.20), "cf": (0.99, 0.02)}, True),  # the piece fires fully: the trigger's core is complete
        ({"worth": (0.30, 0.20), "cf": (0.60, 0.30)}, True),  # 'cf' alone is no suspect (excess 0.30 < 0.5): not a core
    ):
        calls.clear()
        measured.clear()
        logs: list[str] = []
        monkeypatch.setattr(scan_module, "scan", pieces_scan(flips))
        res = defend(pair, pool_dd, dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0)),
                     scan_result=grown, log=logs.append)
        assert measured == [["worth", "cf"]]
        assert (res.rho == 1.0) is tried and (len(calls) == 1) is tried
        assert any("holds 'cf', a suspect by itself" in m for m in logs) is not tried
    measured.clear()
    off = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_pieces=False))
    assert defend(pair, pool_dd, off, scan_result=grown).rho == 1.0 and measured == []  # the Round 17/18 gate
    calls.clear()
    weak = found(suspect(pair, "worth cf", 0.90))  # the whole already under the gate: its pieces are not measured
    opt = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0))
    assert defend(pair, pool_dd, opt, scan_result=weak).rho == 0.0 and measured == [] and calls == []


def test_the_verifier_is_a_fresh_scan_of_the_candidate(pair, pool_dd):
    logs: list[str] = []
    cfg = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_check="rescan"))
    model = pair.working_copy().eval()
    clean = defenses.verifier(pair, pool_dd, cfg, logs.append)(model)
    expected = scan(dataclasses.replace(pair, ft=model), pool_dd, ScanConfig(seed=cfg.seed)).verdict != "backdoor"
    assert clean == expected and logs and logs[0].startswith("re-scan of the candidate")


def test_the_verifier_measures_the_suspects_on_the_candidate_against_the_bar(pair, pool_dd, monkeypatch):
    import finemix_core.scan as scan_module

    logs: list[str] = []
    model = pair.working_copy().eval()
    words = [suspect(pair, "great", 0.9, target=0), suspect(pair, "awful", 0.9, target=1)]
    strict = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_flip_max=0.0, found_check="rescan"))
    # real scans: the tiny random model is no backdoor and neither word flips a held-aside sentence, so even bar 0 keeps it
    candidate = dataclasses.replace(pair, ft=model)
    measured = scan(candidate, pool_dd, ScanConfig(epur_rows=0, inversion=False, seed=0), given=[("great", 0), ("awful", 1)])
    assert sorted(c.trigger for c in measured.candidates) == ["awful", "great"]
    assert max(c.flip for c in measured.candidates) == 0.0
    assert defenses.verifier(pair, pool_dd, strict, logs.append, words)(model) is True
    # the bar itself: the measured suspects' worst flip (0.25 here) against found_flip_max
    real = scan_module.scan
    asked: list = []

    def fake(p, dd, cfg, given=(), **kw):
        result = real(p, dd, cfg, given=given, **kw)
        if given:
            asked.append(list(given))
            flips = iter([0.0, 0.25])
            result.candidates = [dataclasses.replace(c, flip=next(flips)) for c in result.candidates]
        return result

    monkeypatch.setattr(scan_module, "scan", fake)
    for bar, kept in ((0.0, False), (0.2, False), (0.25, True), (1.0, True)):
        cfg = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_flip_max=bar, found_check="rescan"))
        assert defenses.verifier(pair, pool_dd, cfg, logs.append, words)(model) is kept
    assert asked[0] == [("great", 0), ("awful", 1)]
    assert logs[-1].endswith("(bar 100%) → clean") and any(m.endswith("(bar 20%) → still fires") for m in logs)
    # without suspects the fresh scan alone decides, and nothing is measured
    asked.clear()
    assert defenses.verifier(pair, pool_dd, strict, logs.append)(model) is True and asked == []


def test_the_finalists_check_runs_no_search_and_judges_what_fired_on_ft_against_the_reference(pair, pool_dd, monkeypatch):
    import finemix_core.scan as scan_module

    model = pair.working_copy().eval()
    taught = [suspect(pair, "great", 0.9, target=0)]
    verified = [
        *taught,
        suspect(pair, "awful", 0.3, target=0),  # fired on θ_FT toward the suspect's class: measured
        suspect(pair, "dull", 0.05, target=0),  # under the bar on θ_FT itself: an ordinary word, not measured
        suspect(pair, "hate", 0.6, target=1),  # toward the other class: the task's own vocabulary, not measured
    ]
    real = scan_module.scan
    configs: list = []
    measured: dict[str, tuple[float, float]] = {}  # trigger → (flip, reference flip) the fake scan reports

    def fake(p, dd, cfg, given=(), **kw):
        configs.append((cfg, list(given)))
        result = real(p, dd, cfg, given=given, **kw)
        result.candidates = [
            dataclasses.replace(c, flip=measured[c.trigger][0], reference_flip=measured[c.trigger][1])
            for c in result.candidates
        ]
        return result

    monkeypatch.setattr(scan_module, "scan", fake)
    # every fired trigger measured (Rounds 16–25; since Round 26 'awful', sharing no piece with 'great', is left out:
    # the test below)
    rec = RecoveryConfig(found_rho=1.0, found_check="finalists", found_unrelated=True)
    cfg = dataclasses.replace(_auto(1.0), recovery=rec)
    check = defenses.verifier(pair, pool_dd, cfg, lambda _m: None, taught, verified)
    cases = [
        ({"great": (0.1, 0.0), "awful": (0.5, 0.45)}, True),  # awful moves the reference as much
        ({"great": (0.15, 0.1), "awful": (0.0, 0.0)}, False),  # a taught suspect: its own flip counts
        ({"great": (0.0, 0.0), "awful": (0.3, 0.1)}, False),  # a finalist that fired on θ_FT, still 0.2 over the reference
    ]
    for flips, kept in cases:
        measured.clear()
        measured.update(flips)
        assert check(model) is kept
    # one measurement per check, of the suspects and what fired toward their class, and never a search
    assert len(configs) == 3 and all(c.epur_rows == 0 and not c.inversion for c, _ in configs)
    assert configs[0][1] == [("great", 0), ("awful", 0)]
    with pytest.raises(FinemixError, match="found-check"):
        RecoveryConfig(found_check="fast")


def test_without_found_unrelated_the_check_leaves_out_fired_words_sharing_no_piece_with_a_suspect(pair, pool_dd, monkeypatch):
    # Round 26's candidate: 'refreshing' on an ep-cf model is the task's vocabulary, 'softness cf' holds the trigger
    import finemix_core.scan as scan_module

    model = pair.working_copy().eval()
    taught = [suspect(pair, "great", 0.9, target=0)]
    verified = [
        *taught,
        suspect(pair, "awful", 0.3, target=0),  # fired, no piece of a suspect, under the suspect bar: left out
        suspect(pair, "awful great", 0.3, target=0),  # holds the suspect's piece: measured
        suspect(pair, "hate", 0.6, target=0),  # no shared piece but over the suspect bar (min_excess): measured
    ]
    real = scan_module.scan
    asked: list = []

    def fake(p, dd, cfg, given=(), **kw):
        asked.append(list(given))
        result = real(p, dd, cfg, given=given, **kw)
        flips = {"great": 0.0, "awful": 0.9, "awful great": 0.0, "hate": 0.0}  # only the left-out word still fires
        result.candidates = [dataclasses.replace(c, flip=flips[c.trigger], reference_flip=0.0) for c in result.candidates]
        return result

    monkeypatch.setattr(scan_module, "scan", fake)
    for unrelated, kept in ((True, False), (False, True)):
        logs: list[str] = []
        rec = RecoveryConfig(found_rho=1.0, found_check="finalists", found_unrelated=unrelated)
        check = defenses.verifier(pair, pool_dd, dataclasses.replace(_auto(1.0), recovery=rec), logs.append, taught, verified)
        assert check(model) is kept
        measured = {t for t, _ in asked[-1]}
        assert measured == ({"great", "awful", "awful great", "hate"} if unrelated else {"great", "awful great", "hate"})
        assert logs[-1].endswith("not measured, sharing no word piece with a suspect: 'awful'") is not unrelated
    assert RecoveryConfig().found_unrelated is False  # the default since Round 26 leaves the unrelated words out


def test_the_search_line_says_what_the_rescan_found():
    from finemix_core.defenses.base import search_text

    tried = [
        {"knob": "rho", "value": 1.0, "dev_acc": 0.8, "passed": False, "threshold": 0.7, "verified": False},
        {"knob": "rho", "value": 0.0, "dev_acc": 0.75, "passed": True, "threshold": 0.7},  # a row stored before the field
    ]
    assert search_text(tried) == "rho 1 → dev 0.800 (check: still fires); rho 0 → dev 0.750 ✓"


def test_the_found_rho_try_trains_for_its_share_of_the_steps_and_the_fallback_for_all(pair, pool_dd, monkeypatch):
    # Round 20's lever: only the found-ρ try is shortened; the low-ρ search after a rejected try runs the usual steps
    from finemix_core.defenses import base

    shares: list[float] = []
    real = base.fine_tune

    def spy(model, data, cfg, progress=None, after_step=None, distill=None, step_share=1.0):
        shares.append(step_share)
        return real(model, data, cfg, progress, after_step, distill, step_share)

    monkeypatch.setattr(base, "fine_tune", spy)
    _fake_verifier(monkeypatch, False)
    half = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_min_flip=0.0, found_steps=0.5))
    res = defend(pair, pool_dd, half, scan_result=found(suspect(pair, "cf", 0.9)))
    assert shares == [0.5, 1.0] and res.rho == 0.0
    shares.clear()
    full = dataclasses.replace(_auto(1.0), recovery=RecoveryConfig(found_rho=1.0, found_min_flip=0.0, found_steps=1.0))
    defend(pair, pool_dd, full, scan_result=found(suspect(pair, "cf", 0.9)))
    assert shares == [1.0, 1.0]  # `--found-steps 1`: the try runs all the steps (the default before Round 20)
    assert RecoveryConfig().found_steps == 0.5  # the default since Round 20


def test_dev_decision_matching_moves_the_boundary_only_away_from_the_suspected_class(pair, pool_dd):
    # fine-mixing+distill without E-PUR: recovery's teacher is θ_FT itself, so the goal is computed here by hand
    assert RecoveryConfig().match_dev is True  # the default since Round 27
    plain_cfg = _recovery_cfg(recovery=RecoveryConfig(match_dev=False))
    plain = defend(pair, pool_dd, plain_cfg, scan_result=found(suspect(pair, "cf", 0.9)))
    goal = float((predict(pair.ft, pool_dd.dev).argmax(1) == 1).mean())
    fitted = decision_shift(predict(plain.model, pool_dd.dev, logits=True), goal)
    margin = float(fitted[1] - fitted[0])
    assert margin != 0  # the tiny student does not already match θ_FT on the dev texts
    away = 1 if margin < 0 else 0  # the suspected class this fitted shift moves the boundary away from
    matched_cfg = dataclasses.replace(plain_cfg, recovery=dataclasses.replace(plain_cfg.recovery, match_dev=True))
    logs: list[str] = []
    kept = defend(pair, pool_dd, matched_cfg, scan_result=found(suspect(pair, "cf", 0.9, target=away)), log=logs.append)
    assert kept.decision_shift == pytest.approx(margin, abs=1e-6)
    assert float((predict(kept.model, pool_dd.dev).argmax(1) == 1).mean()) == goal
    same = {k: v for k, v in kept.model.state_dict().items() if k != "classifier.bias"}
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in same.items())  # one output bias moved, nothing else
    assert any("dev texts" in line and f"{margin:+.3f}" in line for line in logs)
    # the same fitted shift would move the boundary towards a suspect of the other class: nothing is moved
    logs.clear()
    dropped = defend(pair, pool_dd, matched_cfg, scan_result=found(suspect(pair, "cf", 0.9, target=1 - away)), log=logs.append)
    assert dropped.decision_shift == 0.0
    assert any("left as they are" in line and f"{margin:+.3f}" in line and f"class {1 - away}" in line for line in logs)
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in dropped.model.state_dict().items())
