"""Remembered defenses on a tiny random BERT: stored after a run, read back bit-exact for the same inputs only, never
for the report's OFF, bounded in number."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datasets import Dataset

from finemix_core import remembered
from finemix_core.config import TrainConfig
from finemix_core.defenses import REGISTRY, DefenseConfig, defend, defender_data
from finemix_core.epur import EpurConfig
from finemix_core.models import load_pair
from finemix_core.remembered import Remember
from finemix_core.scan import ScanResult, Suspect, text_ids

POS = ["a good movie", "great fun and charming", "the best acting", "love this film", "a charming story", "great cast"]
NEG = ["a bad movie", "awful and dull", "the worst plot", "hate this film", "a boring script", "dull acting"]
CFG = DefenseConfig(method="epur+fine-mixing+distill", rho=0.5, train=TrainConfig(lr=1e-3, epochs=1.0, batch_size=8), epur=EpurConfig(k=5))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEMIX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def pair(tiny_pair_dirs):
    ft, pt = tiny_pair_dirs
    return load_pair(ft, pt)


def parts(pair, pool_texts=("a fun film", "the best plot", "awful and boring", "the cast was great")):
    train = Dataset.from_dict({"text": POS * 3 + NEG * 3, "label": [1] * 18 + [0] * 18})
    dev = Dataset.from_dict({"text": POS + NEG, "label": [1] * 6 + [0] * 6})
    pool = Dataset.from_dict({"text": list(pool_texts), "label": [0] * len(pool_texts)})
    return defender_data(pair.tokenizer, train, dev, 16, 12, 0, 32, unlabeled=pool, unlabeled_source="test pool")


def no_scan() -> ScanResult:  # a scan handed in: nothing suspected, so recovery is plain distillation
    return ScanResult("no evidence", 0.0, 0.81, [], 1.0, "test", "test", 4, 8)


def forbid_runs(monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "fine-mixing", lambda job: (_ for _ in ()).throw(AssertionError("ran again")))


def test_an_identical_defense_is_read_back_bit_exact_and_says_so(home, pair, monkeypatch):
    dd = parts(pair)
    first = defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.STORE)
    assert not first.read_back and len(list((home / "cache" / "defense").iterdir())) == 1
    forbid_runs(monkeypatch)
    again = defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.REUSE)
    assert again.read_back and again.model is not first.model and again.model is not pair.ft
    stored, now = first.model.state_dict(), again.model.state_dict()
    assert stored.keys() == now.keys() and all(torch.equal(stored[k], now[k]) for k in stored)
    assert (again.rho, again.search, again.flagged, again.dev_acc) == (first.rho, first.search, first.flagged, first.dev_acc)
    assert again.seconds == first.seconds and again.unlabeled_used == first.unlabeled_used
    with pytest.raises(AssertionError, match="ran again"):  # STORE always runs (the CLI: its time is a real run's)
        defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.STORE)


@pytest.mark.parametrize("change", ["seed", "pool", "suspects", "weights"])
def test_any_changed_input_is_a_new_run(home, pair, monkeypatch, change):
    dd = parts(pair)
    defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.STORE)
    forbid_runs(monkeypatch)
    cfg, scan_result = CFG, no_scan()
    if change == "seed":
        cfg = dataclasses.replace(CFG, seed=1)
    elif change == "pool":
        dd = parts(pair, ("a fun film", "the best plot"))
    elif change == "suspects":
        cf = Suspect("cf", text_ids(pair.tokenizer, "cf"), 1, 1.0, 0.9, 1.0, 10, 0.0, "epur")
        scan_result = ScanResult("backdoor", 1.0, 0.81, [cf], 1.0, "test", "test", 4, 8)
    else:
        with torch.no_grad():
            pair.ft.classifier.bias.add_(1.0)
    with pytest.raises(AssertionError, match="ran again"):
        defend(pair, dd, cfg, scan_result=scan_result, remember=Remember.REUSE)


def test_off_neither_reads_nor_writes_and_only_the_newest_entries_stay(home, pair, monkeypatch):
    dd = parts(pair)
    defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.OFF)
    assert not (home / "cache" / "defense").exists()  # the report's runs leave nothing behind
    monkeypatch.setattr(remembered, "KEEP", 2)
    for seed in range(3):
        defend(pair, dd, dataclasses.replace(CFG, seed=seed), scan_result=no_scan(), remember=Remember.STORE)
    entries = [p for p in (home / "cache" / "defense").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2 and not list((home / "cache" / "defense").glob(".tmp-*"))
    forbid_runs(monkeypatch)
    newest = defend(pair, dd, dataclasses.replace(CFG, seed=2), scan_result=no_scan(), remember=Remember.REUSE)
    assert newest.read_back
    with pytest.raises(AssertionError, match="ran again"):  # the oldest was dropped
        defend(pair, dd, dataclasses.replace(CFG, seed=0), scan_result=no_scan(), remember=Remember.REUSE)


def test_a_damaged_entry_is_run_again(home, pair):
    dd = parts(pair)
    defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.STORE)
    (entry,) = (home / "cache" / "defense").iterdir()
    (entry / "model.safetensors").write_bytes(b"not weights")
    again = defend(pair, dd, CFG, scan_result=no_scan(), remember=Remember.REUSE)
    assert not again.read_back


def test_a_scan_run_inside_and_the_same_scan_handed_in_are_one_key(home, pair, monkeypatch):
    """The lab's second click hands in the scan its first click ran: the same suspects, so the same stored defense."""
    from finemix_core import defenses

    monkeypatch.setattr(defenses, "scan_for_recovery", lambda *a: no_scan())
    dd = parts(pair)
    first = defend(pair, dd, CFG, remember=Remember.REUSE)  # scans (here: the stub), runs, stores
    forbid_runs(monkeypatch)
    again = defend(pair, dd, CFG, scan_result=first.scan, remember=Remember.REUSE)
    assert again.read_back and again.rho == first.rho
