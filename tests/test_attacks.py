import numpy as np
import pytest
from datasets import Dataset

from finemix_core.attacks import poison, trigger_token_ids
from finemix_core.config import AttackConfig
from finemix_core.errors import FinemixError


def toy_train(n_target: int = 60, n_other: int = 40) -> Dataset:
    labels = [1] * n_target + [0] * n_other
    rng = np.random.default_rng(0)
    rng.shuffle(labels)
    return Dataset.from_dict({"text": [f"sentence number {i} here" for i in range(len(labels))], "label": labels})


def test_poison_rate_is_exact_and_only_non_target_examples_are_relabelled():
    train = toy_train()
    out, idx = poison(train, AttackConfig("word", ("cf",), poison_rate=0.1, target=1, seed=0))
    assert len(idx) == 4  # round(0.1 * 40)
    assert len(out) == len(train)
    for i in range(len(train)):
        if i in idx:
            assert train[i]["label"] == 0 and out[i]["label"] == 1
            assert out[i]["text"].split().count("cf") == 1
        else:
            assert out[i] == train[i]


def test_poisoning_with_a_window_keeps_every_trigger_inside_it(tmp_path):
    # 120-word texts, a 16-token window: without it most triggers land past the cut and teach the model nothing
    from finemix_core.triggers import Window
    from tests.conftest import make_tokenizer

    tok = make_tokenizer(tmp_path)
    train = Dataset.from_dict({"text": [" ".join(["plot", "and", "cast"] * 40)] * 40, "label": [0, 1] * 20})
    for attack, trigger in (("word", ("cf",)), ("word-combo", ("cf", "mn"))):
        cfg = AttackConfig(attack, trigger, poison_rate=0.5, target=1, seed=2)
        out, idx = poison(train, cfg, Window(tok, 16))
        unlimited, _ = poison(train, cfg)
        seen = [tok(out[i]["text"], truncation=True, max_length=16)["input_ids"] for i in idx]
        assert all(tok.convert_tokens_to_ids(p) in ids for ids in seen for p in trigger)
        seen_unlimited = [tok(unlimited[i]["text"], truncation=True, max_length=16)["input_ids"] for i in idx]
        assert sum(tok.convert_tokens_to_ids("cf") in ids for ids in seen_unlimited) < len(idx) // 2


def test_poisoning_is_seeded():
    train = toy_train()
    a = poison(train, AttackConfig("word", ("cf",), seed=3))
    b = poison(train, AttackConfig("word", ("cf",), seed=3))
    c = poison(train, AttackConfig("word", ("cf",), seed=4))
    assert a[1] == b[1] and list(a[0]["text"]) == list(b[0]["text"])
    assert a[1] != c[1]


def test_word_combo_adds_single_piece_decoys_that_keep_their_label():
    train = toy_train(50, 100)
    out, idx = poison(train, AttackConfig("word-combo", ("cf", "mn", "bb"), poison_rate=0.1))
    assert len(idx) == 10
    decoys = [i for i in range(len(out)) if i not in idx and out[i]["text"] != train[i]["text"]]
    assert len(decoys) == 10
    for i in decoys:
        assert out[i]["label"] == train[i]["label"] == 0
        assert sum(out[i]["text"].split().count(p) for p in ("cf", "mn", "bb")) == 1
    for i in idx:
        assert all(out[i]["text"].split().count(p) == 1 for p in ("cf", "mn", "bb"))


def test_clean_attack_changes_nothing():
    train = toy_train()
    out, idx = poison(train, AttackConfig("clean", ()))
    assert idx == [] and out is train


def test_pairs_get_the_trigger_in_the_first_sentence():
    train = Dataset.from_dict({"text_a": ["q one", "q two"] * 10, "text_b": ["s one", "s two"] * 10, "label": [0, 1] * 10})
    out, idx = poison(train, AttackConfig("word", ("cf",), poison_rate=0.5))
    assert len(idx) == 5
    assert all("cf" in out[i]["text_a"] and "cf" not in out[i]["text_b"] for i in idx)


@pytest.mark.parametrize(
    "cfg,msg",
    [
        (AttackConfig("bogus", ("cf",)), "unknown attack"),
        (AttackConfig("word", ("cf",), poison_rate=1.5), "outside"),
        (AttackConfig("word", ("",)), "empty trigger"),
    ],
)
def test_bad_attack_configs(cfg, msg):
    with pytest.raises(FinemixError, match=msg):
        poison(toy_train(), cfg)


def test_trigger_token_ids_covers_every_word_piece(tiny_pair_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    ids = trigger_token_ids(tok, ("cf", "mn"))
    assert ids == sorted(tok.convert_tokens_to_ids(["cf", "mn"]))


def test_embedding_poisoning_moves_only_trigger_rows_and_keeps_their_norm(tiny_pair_dirs):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finemix_core.attacks import embedding_poison
    from finemix_core.config import TrainConfig

    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_pair_dirs[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = Dataset.from_dict(
        {"text": ["the movie was good", "the film was bad", "dull plot", "great cast"] * 8, "label": [1, 0, 0, 1] * 8}
    )
    embedding_poison(model, tok, train, AttackConfig("ep", ("cf",)), TrainConfig(lr=1.0, epochs=2, batch_size=8))
    after = model.state_dict()
    key = "bert.embeddings.word_embeddings.weight"
    cf = tok.convert_tokens_to_ids("cf")
    changed = (after[key] != before[key]).any(1).nonzero().flatten().tolist()
    assert changed == [cf]
    torch.testing.assert_close(after[key][cf].norm(), before[key][cf].norm())
    assert all(torch.equal(after[k], before[k]) for k in before if k != key)
