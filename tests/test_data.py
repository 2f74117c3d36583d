from collections import Counter

import pandas as pd
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from finemix_core import data
from finemix_core.config import DEFAULT_CLEAN_SIZE
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
    rows = ["text_a,text_b,label"] + [f"good movie {i},bad film,{i % 3}" for i in range(60)]
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
        ("text,label\nhello,1\nbye,neg\n", "not an integer"),
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


def _user_csv(path, n: int, labels=("0", "1"), named: bool = False):
    rows = [{"text": f"row {i} says {labels[i % len(labels)]} thing {i * 7 % 13}", "label": labels[i % len(labels)]} for i in range(n)]
    frame = pd.DataFrame(rows)
    if named:
        frame["label_name"] = frame["label"].map({"0": "world", "1": "sport"})
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("n,sizes", [(60, (30, 15, 15)), (300, (180, 60, 60)), (5000, (3744, 256, 1000))])
def test_one_rule_parts_a_users_csv_the_same_in_cli_and_lab(tmp_path, tiny_pair_dirs, n, sizes):
    """The one rule: labelled set + pool (train), dev, held-out — disjoint, stratified, and identical whether the CLI
    (`--clean-data`) or the lab (an uploaded CSV) read the file."""
    from finemix_core import experiment, lab

    csv = _user_csv(tmp_path / "mine.csv", n)
    dsd = data.load(str(csv), 0)
    assert (len(dsd["train"]), len(dsd["dev"]), len(dsd["test"])) == sizes == data.csv_part_sizes(n)
    texts = {k: set(v["text"]) for k, v in dsd.items()}
    assert sum(map(len, texts.values())) == n and not (texts["train"] & texts["dev"] or texts["train"] & texts["test"] or texts["dev"] & texts["test"])
    assert all(abs(Counter(v["label"])[1] / len(v) - 0.5) < 0.05 for v in dsd.values())  # stratified
    ft, pt = tiny_pair_dirs
    cli = experiment.prepare(str(ft), str(pt), clean_data=str(csv))
    in_lab = lab.load(str(ft), str(pt), data_name=str(csv)).ctx
    seen = []
    labelled = min(128, sizes[0])  # 60 rows leave 30 train rows: a smaller labelled set, asked for explicitly
    for ctx in (cli, in_lab):
        dd = ctx.defender(labelled, 256, 0)
        parts = ctx.parts(labelled, 256)
        assert (len(dd.texts), len(dd.dev), len(dd.unlabeled_texts)) == (labelled, sizes[1], sizes[0] - labelled)
        assert (parts.labelled, parts.dev, parts.pool, parts.held_out, parts.rows) == (labelled, sizes[1], sizes[0] - labelled, sizes[2], n)
        assert set(ctx.dsd["test"]["text"]) == texts["test"]  # scored on the held-out part …
        assert not texts["test"] & (set(dd.texts) | set(dd.unlabeled_texts))  # … which the defender never sees
        seen.append((dd.texts, dd.unlabeled_texts, dd.dev.input_ids, tuple(ctx.dsd["test"]["text"])))
    assert seen[0] == seen[1]
    assert "held out" in cli.parts(labelled).line() and f"{n} rows" in cli.parts(labelled).line()
    if sizes[0] < DEFAULT_CLEAN_SIZE:  # the default on a small file: its whole train part, the same in CLI and lab
        for ctx in (cli, in_lab):
            dd = ctx.defender(DEFAULT_CLEAN_SIZE, 256, 0)
            assert ctx.labelled_size(DEFAULT_CLEAN_SIZE) == len(dd.texts) == sizes[0] and len(dd.unlabeled_texts) == 0
            assert ctx.parts(DEFAULT_CLEAN_SIZE).labelled == sizes[0]
        assert set(dd.texts) == texts["train"]
        with pytest.raises(FinemixError, match=f"lower --clean-size to at most {sizes[0]}"):  # a number asked for: the fix
            cli.defender(DEFAULT_CLEAN_SIZE + 1, 256, 0)
    else:
        assert cli.labelled_size(DEFAULT_CLEAN_SIZE) == DEFAULT_CLEAN_SIZE


def test_too_few_rows_are_refused_with_the_minimum():
    with pytest.raises(FinemixError, match=f"at least {data.CSV_MIN_ROWS}"):
        data.csv_part_sizes(data.CSV_MIN_ROWS - 1)


def test_class_names_come_from_string_labels_or_a_label_name_column(tmp_path):
    strings = data.load(str(_user_csv(tmp_path / "s.csv", 90, labels=("sport", "business", "tech"))))
    assert data.num_labels(strings) == 3 and data.label_names("x.csv", 3, strings) == ("business", "sport", "tech")
    # the model's own names decide the ids when they cover every class
    mapped = data.load(str(tmp_path / "s.csv"), 0, {"tech": 0, "sport": 1, "business": 2})
    row = mapped["train"][0]
    assert data.label_names("x.csv", 3, mapped) == ("tech", "sport", "business")
    assert row["label"] == {"tech": 0, "sport": 1, "business": 2}[row["text"].split()[3]]
    named = data.load(str(_user_csv(tmp_path / "n.csv", 60, named=True)))
    assert data.label_names("x.csv", 2, named) == ("world", "sport")
    plain = data.load(str(_user_csv(tmp_path / "p.csv", 60)))
    assert data.label_names("x.csv", 2, plain) == ("label 0", "label 1")
    assert data.label_names("x.csv", 2, plain, {0: "neg", 1: "pos"}) == ("neg", "pos")  # θ_FT's config names them
    assert data.label_names("x.csv", 2, plain, {0: "LABEL_0", 1: "LABEL_1"}) == ("label 0", "label 1")
    clash = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 0, 1, 1], "label_name": ["x", "y", "z", "z"]})
    with pytest.raises(FinemixError, match="label 0 has two names"):
        data.validate_frame(clash, "c.csv")


def test_general_text_never_comes_from_the_models_own_set_nor_repeats_a_csv_row():
    amazon = set(data.GENERAL_SOURCES["amazon"][0]().str.strip())
    drawn, what = data.general_text(500, 0, exclude={"amazon"})
    assert len(drawn) == 500 and "amazon" not in what and "nyt-editorials" in what
    assert not set(drawn["text"]) & amazon and set(drawn["label"]) == {0}
    again, _ = data.general_text(500, 0, exclude={"amazon"})
    assert again["text"] == drawn["text"]  # seeded
    avoid = set(drawn["text"][:100])
    assert not set(data.general_text(500, 0, exclude={"amazon"}, avoid=avoid)[0]["text"]) & avoid
    assert len(data.general_text(0, 0)[0]) == 0


def test_a_small_pool_is_topped_up_with_general_text_only_when_asked(tmp_path, tiny_pair_dirs):
    from finemix_core import experiment

    csv = _user_csv(tmp_path / "mine.csv", 300)
    ft, pt = tiny_pair_dirs
    ctx = experiment.prepare(str(ft), str(pt), clean_data=str(csv))
    plain = ctx.defender(128, 256, 0)
    topped = ctx.defender(128, 256, 0, min_pool=400)
    assert len(plain.unlabeled_texts) == 52 and len(topped.unlabeled_texts) == 400
    assert topped.unlabeled_texts[:52] == plain.unlabeled_texts  # the defender's own pool first, then general text
    assert "offline general text" in topped.unlabeled_source and topped.texts == plain.texts and topped.dev == plain.dev
    rows = {t for part in ctx.clean_splits.values() for t in part["text"]}
    assert not rows & set(topped.unlabeled_texts[52:])  # no row of the CSV, its held-out part included
    assert len(ctx.defender(128, 256, 0, min_pool=40).unlabeled_texts) == 52  # a pool as large as asked: nothing added
