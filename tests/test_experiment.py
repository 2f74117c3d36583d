"""The defender's data as experiment.Context builds it: labelled train/dev, the unlabelled pool, a user's CSV split
into train and dev only, and --unlabeled texts — never a test row."""

from __future__ import annotations

import pytest

from finemix_core import data, experiment
from finemix_core.errors import FinemixError


@pytest.fixture()
def ctx(tiny_zoo, monkeypatch):
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    return lambda **kw: experiment.prepare("word-cf", str(pt), **kw)


def _texts(enc, tok) -> set[str]:
    return {tok.decode(ids, skip_special_tokens=True) for ids in enc.input_ids}


@pytest.mark.parametrize("n_split,dev_size,expected", [(1275, 256, 256), (80, 256, 40), (3, 256, 1), (0, 256, 0)])
def test_dev_examples_leave_half_of_a_small_dev_split_for_the_pool(n_split, dev_size, expected):
    assert experiment.dev_examples(n_split, dev_size) == expected


def test_builtin_pool_is_the_dev_split_beyond_the_dev_examples_and_never_test(ctx):
    import dataclasses

    c = dataclasses.replace(ctx(), clean_data=None, clean_splits=None)  # a registry set's splits (the tiny data is a CSV)
    dd = c.defender(32, 256, 0)
    tok = c.pair.tokenizer
    dev = list(c.dsd["dev"]["text"])
    n = len(dev) // 2  # the tiny split is small: half measures dev accuracy, half is the pool
    assert len(dd.dev) == n and dd.dev.input_ids == tok(dev[:n], truncation=True, max_length=128)["input_ids"]
    assert (
        dd.unlabeled.input_ids == tok(dev[n:], truncation=True, max_length=128)["input_ids"]
    )  # exactly the rest of dev: no test row
    assert "dev split beyond its first" in dd.unlabeled_source


def test_a_users_csv_is_parted_by_the_one_rule_and_its_spare_train_rows_are_the_pool(ctx, tmp_path):
    rows = ["text,label"] + [f"the film was {'great' if i % 2 else 'awful'} number {i},{i % 2}" for i in range(100)]
    csv = tmp_path / "mine.csv"
    csv.write_text("\n".join(rows) + "\n")
    c = ctx(clean_data=str(csv))  # the card's dataset is still what the model is scored on
    assert c.data_name != str(csv) and c.clean_data == str(csv)
    dd = c.defender(32, 256, 0)
    assert data.csv_part_sizes(100) == (50, 25, 25)  # 25 (a quarter, under the 50 minimum) dev and held out
    assert len(dd.train) == 32 and len(dd.dev) == 25
    assert len(dd.unlabeled) == 50 - 32 and "mine.csv train rows beyond the 32 labelled" in dd.unlabeled_source
    held = set(c.clean_splits["test"]["text"])  # the held-out part exists even when the card's data is scored on …
    assert len(held) == 25 and not held & (set(dd.texts) | set(dd.unlabeled_texts))  # … and the defender never sees it
    assert "100 rows" in c.parts(32).line() and "scored on " + c.data_name in c.parts(32).line()


def test_unlabeled_file_joins_the_pool(ctx, tmp_path):
    txt = tmp_path / "pool.txt"
    txt.write_text("a great film\n\nthe awful plot\na great film\n")
    c = ctx(unlabeled=str(txt))
    dd = c.defender(32, 256, 0)
    assert "pool.txt (2)" in dd.unlabeled_source and {"a great film", "the awful plot"} <= _texts(dd.unlabeled, c.pair.tokenizer)


@pytest.mark.parametrize(
    "content,name,expected",
    [
        (None, "missing.txt", "unlabelled text file not found"),
        ("\n\n", "blank.txt", "no texts"),
        ("foo,bar\n1,2\n", "cols.csv", "no text column"),
    ],
)
def test_bad_unlabeled_files_get_one_line(tmp_path, content, name, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(FinemixError, match=expected) as info:
        data.read_unlabeled(path)
    assert "\n" not in str(info.value)


def cardless_copy(home, tmp_path):
    """The tiny zoo's word-cf backdoor as someone hands it over: a folder without its card (nothing says `cf`)."""
    import shutil

    folder = tmp_path / "someones-model"
    shutil.copytree(home / "zoo" / "word-cf", folder)
    (folder / "finemix.json").unlink()
    return folder


def test_cli_defends_a_cardless_folder_from_a_clean_csv_alone(tiny_zoo, tmp_path, monkeypatch):
    """A model the project has never seen: no card, only a clean CSV — split into train and dev for the defender, its
    test tenth held out for scoring alone."""
    import json

    from typer.testing import CliRunner

    from finemix_core.cli import app

    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    folder = cardless_copy(home, tmp_path)
    out = tmp_path / "cleaned"
    res = CliRunner().invoke(
        app,
        [
            "defend",
            "--model",
            str(folder),
            "--pretrained",
            str(pt),
            "--clean-data",
            str(home / "tiny.csv"),
            "--trigger",
            "cf",
            "--target",
            "1",
            "--epur-k",
            "5",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["method"] == "epur+fine-mixing+distill" and row["clean_data"] == str(home / "tiny.csv")
    # 1,100 rows by the one rule: 220 held out (scored on), 220 dev, 660 train → 128 labelled + 532 pool
    assert row["n_clean"] == 220 and row["dev_size"] == 220
    # the pool: the 532 train rows not labelled, topped up to 1,000 with offline general text (--general-text)
    assert row["unlabeled_n"] == 1000 and "(532)" in row["unlabeled_source"] and "offline general text" in row["unlabeled_source"]
    assert row["parts"].startswith("clean data tiny.csv (1100 rows") and "scored on its held-out part" in row["parts"]
    assert json.loads((out / "finemix.json").read_text())["parts"] == row["parts"]  # the card says it too
    assert row["search"] and (out / "model.safetensors").is_file()


def test_the_default_fits_a_csv_too_small_for_128_labelled_rows(tiny_zoo, tmp_path, monkeypatch):
    """A user's 200 rows leave 100 train rows by the one rule: the default labelled set is all of them (not an error
    asking for --clean-size), the card and the parts line say 100, and recovery's pool is general text alone."""
    import json

    from typer.testing import CliRunner

    from finemix_core.cli import app

    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    folder = cardless_copy(home, tmp_path)
    small = tmp_path / "small.csv"
    small.write_text("\n".join((home / "tiny.csv").read_text().splitlines()[:201]) + "\n")  # header + 200 rows
    assert data.csv_part_sizes(200) == (100, 50, 50)
    out = tmp_path / "cleaned"
    args = ["defend", "--model", str(folder), "--pretrained", str(pt), "--clean-data", str(small), "--trigger", "cf"]
    args += ["--target", "1", "--epur-k", "5", "--epochs", "1", "--out", str(out), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["clean_size"] == 100 and "100 labelled · 50 dev · 0 unlabelled pool · 50 held out" in row["parts"]
    assert row["unlabeled_n"] == 1000 and row["unlabeled_source"].startswith("offline general text")
    assert json.loads((out / "finemix.json").read_text())["clean_size"] == 100
    asked = CliRunner().invoke(app, args[:-3] + ["--clean-size", "101", "--out", str(tmp_path / "o2")])
    assert asked.exit_code != 0 and "lower --clean-size to at most 100" in asked.output and not (tmp_path / "o2").exists()


def test_labels_that_do_not_match_the_models_ids_are_said(ctx, tiny_zoo, tmp_path):
    """θ_FT below chance on a CSV's dev part: the file's ids (or the sorted order of its class names) are not the
    model's. Named negative/positive, the tiny sentiment rows sort into the model's order (0 negative) and pass; named
    pos/zneg they sort the other way round and are flagged, with the mapping and the fix."""
    home, _ = tiny_zoo
    rows = (home / "tiny.csv").read_text().splitlines()[1:301]
    right = tmp_path / "right.csv"
    right.write_text("text,label\n" + "\n".join(f"{r[:-2]},{'positive' if r.endswith(',1') else 'negative'}" for r in rows) + "\n")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("text,label\n" + "\n".join(f"{r[:-2]},{'pos' if r.endswith(',1') else 'zneg'}" for r in rows) + "\n")
    assert experiment.label_warning(ctx(clean_data=str(right))) is None
    warn = experiment.label_warning(ctx(clean_data=str(wrong)))
    assert warn and "below chance (1/2)" in warn and "0 = pos, 1 = zneg" in warn and "label_name column" in warn
