from collections import Counter

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from finemix_core import data
from finemix_core.encoding import encode
from finemix_core.errors import FinemixError


@pytest.fixture(scope="module")
def rt():
    return data.load("rt", split_seed=0)


def test_rotten_tomatoes_is_deduplicated_and_split_80_10_10_stratified(rt):
    sizes = {k: len(v) for k, v in rt.items()}
    assert sum(sizes.values()) == 12752
    assert abs(sizes["train"] - 0.8 * 12752) <= 1 and abs(sizes["dev"] - sizes["test"]) <= 1
    share = {k: Counter(v["label"])[1] / len(v) for k, v in rt.items()}
    assert all(abs(s - 7368 / 12752) < 0.005 for s in share.values())  # fresh share kept in every split
    assert not set(rt["train"]["text"]) & set(rt["test"]["text"])  # no leakage


def test_split_is_seeded(rt):
    again = data.load("rt", split_seed=0)
    other = data.load("rt", split_seed=1)
    assert list(again["test"]["text"]) == list(rt["test"]["text"])
    assert list(other["test"]["text"]) != list(rt["test"]["text"])


@pytest.mark.parametrize("name,classes", [("amazon", 2), ("tweets", 2), ("sms-spam", 2), ("bbc", 5)])
def test_offline_sets_load_with_labels(name, classes):
    dsd = data.load(name)
    assert data.num_labels(dsd) == classes
    assert set(dsd["train"]["label"]) == set(range(classes))
    assert data.text_columns(dsd) == ["text"]


def test_pair_csv_flows_as_pairs(tmp_path, tiny_pair_dirs):
    csv = tmp_path / "pairs.csv"
    rows = ["text_a,text_b,label"] + [f"good movie {i},bad film,{i % 3}" for i in range(30)]
    csv.write_text("\n".join(rows))
    dsd = data.load(str(csv))
    assert data.text_columns(dsd) == ["text_a", "text_b"] and data.num_labels(dsd) == 3
    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    enc = encode(tok, dsd["train"])
    sep = tok.sep_token_id
    assert all(ids.count(sep) == 2 for ids in enc.input_ids)  # [CLS] a [SEP] b [SEP]
    assert all(1 in types and types[0] == 0 for types in enc.token_type_ids)


def test_clean_subset_is_stratified_and_sized(rt):
    sub = data.clean_subset(rt["train"], 128, seed=0)
    assert len(sub) == 128
    assert abs(Counter(sub["label"])[1] - 128 * 7368 / 12752) <= 1
    with pytest.raises(FinemixError, match="larger than"):
        data.clean_subset(rt["train"], 10**6, seed=0)


@pytest.mark.parametrize(
    "content,msg",
    [
        ("", "empty"),
        ("words,label\nhello,1\nbye,0\n", "no text column"),
        ("text,stars\nhello,1\nbye,0\n", "no 'label' column"),
        ("text,label\nhello,pos\nbye,neg\n", "not an integer"),
        ("text,label\nhello,1\nbye,1\n", "only one class"),
        ("text,label\nhello,-1\nbye,0\n", "negative label"),
        ("text,label\n", "no rows"),
    ],
)
def test_bad_csv_gets_one_line_error(tmp_path, content, msg):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(FinemixError, match=msg) as err:
        data.load(str(path))
    assert "\n" not in str(err.value)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(FinemixError, match="unknown dataset 'nope'.*rt"):
        data.load("nope")


def test_online_sets_use_load_dataset_with_hub_ids(monkeypatch):
    """Network is the only difference: the hub call is mocked, the rest runs for real."""
    import datasets

    calls = []

    def fake_load(hub_id, config=None):
        calls.append((hub_id, config))
        split = Dataset.from_dict(
            {"question1": ["a?", "b?"] * 20, "question2": ["c?", "d?"] * 20, "label": [0, 1] * 20, "idx": list(range(40))}
        )
        return datasets.DatasetDict(train=split, validation=split.select(range(10)), test=split.select(range(10)))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dsd = data.load("qqp")
    assert calls == [("nyu-mll/glue", "qqp")]
    assert dsd["train"].column_names == ["text_a", "text_b", "label"]
    assert len(dsd["test"]) == 10 and len(dsd["dev"]) == 4


def test_offline_hub_failure_is_one_line(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(FinemixError, match="needs a network"):
        data.load("sst2")
