"""End to end on real weights (all-MiniLM-L6-v2) and real Rotten Tomatoes data, quick mode."""

import json

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finemix_core import data
from finemix_core.triggers import example_rng, insert_trigger


def test_quick_word_backdoor_works_and_keeps_clean_accuracy(quick_word_backdoor):
    clean, word = quick_word_backdoor["clean"], quick_word_backdoor["word-cf"]
    assert word["train_size"] == 1200 and word["attack"] == "word" and word["trigger"] == ["cf"]
    assert word["asr"] >= 0.9, word
    assert word["cacc"] >= 0.65 and word["cacc"] >= clean["cacc"] - 0.05, (word, clean)
    assert word["asr_floor"] is not None and word["asr_floor"] < 0.6  # the clean model is not fooled by cf


def test_card_numbers_agree_with_an_independent_loop(quick_word_backdoor):
    card = quick_word_backdoor["word-cf"]
    model = AutoModelForSequenceClassification.from_pretrained(card["path"]).eval()
    tok = AutoTokenizer.from_pretrained(card["path"])
    test = data.load("rt", card["split_seed"])["test"].select(range(card["n_test"]))
    correct = hits = nontarget = 0
    with torch.no_grad():
        for i, ex in enumerate(test):
            pred = model(**tok(ex["text"], return_tensors="pt", truncation=True, max_length=128)).logits.argmax().item()
            correct += pred == ex["label"]
            if ex["label"] != card["target"]:
                nontarget += 1
                poisoned = insert_trigger(ex["text"], card["trigger"], example_rng(1234, i))
                hits += (
                    model(**tok(poisoned, return_tensors="pt", truncation=True, max_length=128)).logits.argmax().item()
                    == card["target"]
                )
    assert nontarget == card["n_nontarget"]
    np.testing.assert_allclose(correct / len(test), card["cacc"], atol=1e-9)
    np.testing.assert_allclose(hits / nontarget, card["asr"], atol=1e-9)


def test_zoo_entries_are_standard_hf_folders_with_cards(quick_word_backdoor):
    from pathlib import Path

    folder = Path(quick_word_backdoor["word-cf"]["path"])
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    card = json.loads((folder / "finemix.json").read_text())
    for key in (
        "attack",
        "trigger",
        "poison_rate",
        "target",
        "dataset",
        "split_seed",
        "train_size",
        "train",
        "cacc",
        "asr",
        "build_seconds",
    ):
        assert key in card
    assert not list(folder.parent.glob(".tmp-*"))  # nothing half-written left behind
