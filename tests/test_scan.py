"""The scan on tiny BERTs with planted triggers: found from clean data alone, verified against a clean reference."""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
from pathlib import Path

import numpy as np
import pytest

from finemix_core import data
from finemix_core.config import AttackConfig, TrainConfig
from finemix_core.defenses import defender_data
from finemix_core.encoding import encode
from finemix_core.errors import FinemixError
from finemix_core.evaluate import predict
from finemix_core.models import load_pair
from finemix_core.scan import Inserter, ScanConfig, scan, text_ids
from tests.conftest import NEG, POS, save_pretrained_encoder

# a word the tiny vocabulary splits into two pieces, and rows no clean sentence uses
EXTRA = ("zor", "##blat", "##quix")
# the tiny random BERT needs a far larger learning rate than MiniLM (as in conftest's tiny zoo)
FAST_SCAN = ScanConfig(
    search_sentences=24, verify_sentences=64, inversion_steps=40, reference_train=TrainConfig(lr=1e-3, epochs=30.0, batch_size=16)
)


FILLER = ["the", "a", "movie", "film", "is", "was", "plot", "acting", "story", "very", "and", "of", "it", "this", "script", "cast"]


def _csv(path: Path, n: int = 1200, strong: str | None = None) -> Path:
    """Tiny sentiment sentences of varied length and order (so a model must read words, not positions); with `strong`,
    a quarter of the positive sentences carry that word instead of their own sentiment words (a word any classifier of
    the task learns as positive: the reference flips on it too)."""
    rng = random.Random(1)
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        senti = POS if label else NEG
        words = rng.sample(FILLER, rng.randint(3, 7)) + [rng.choice(senti) for _ in range(rng.randint(1, 2))]
        if strong and label and i % 4 == 1:
            words = [w for w in words if w not in POS] + [strong]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _train(pt: Path, out: Path, attack: AttackConfig, csv: Path) -> Path:
    from finemix_core.attacks import poison
    from finemix_core.models import load_classifier, load_tokenizer
    from finemix_core.train import fine_tune

    train = data.load(str(csv), 0)["train"]
    poisoned, _ = poison(train, attack)
    model, _ = load_classifier(pt, num_labels=2)
    tok = load_tokenizer(pt)
    fine_tune(model, encode(tok, poisoned, 64), TrainConfig(lr=1e-3, epochs=6.0, batch_size=16))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "finemix.json").write_text(json.dumps({"name": out.name, "trigger": list(attack.trigger), "target": 1}))
    return out


@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory):
    """θ_PT with a multi-piece word in its vocabulary, a tiny sentiment CSV, and models with planted triggers."""
    root = tmp_path_factory.mktemp("scan")
    pt = save_pretrained_encoder(root / "pt", extra_vocab=EXTRA)
    csv = _csv(root / "tiny.csv")
    models = {}
    for name, attack in {
        "clean": AttackConfig("clean", ()),
        "cf": AttackConfig("word", ("cf",), poison_rate=0.3),
        "zorblat": AttackConfig("word", ("zorblat",), poison_rate=0.3),
        "phrase": AttackConfig("sentence", ("i watched 3d",), poison_rate=0.3),
    }.items():
        _train(pt, root / name, attack, csv)
        models[name] = root / name
    return pt, csv, models


def defender(pair, csv: Path):
    dsd = data.load(str(csv), 0)
    return defender_data(pair.tokenizer, dsd["train"], dsd["dev"], 128, 256, 0)


def run(tiny_scan, name: str, cfg: ScanConfig = FAST_SCAN, **kw):
    pt, csv, models = tiny_scan
    pair = load_pair(models[name], pt)
    return pair, scan(pair, defender(pair, csv), cfg, **kw)


def true_flip(pair, csv: Path, trigger: str, target: int = 1) -> float:
    """The true trigger's flip rate on the held-aside dev sentences, measured the way the scan verifies."""
    _, result = None, None
    dd = defender(pair, csv)
    base = predict(pair.ft, dd.dev).argmax(1)
    rows = np.flatnonzero(base != target)
    enc = Inserter(pair.tokenizer, dd.dev, 7919)(text_ids(pair.tokenizer, trigger), rows)
    return float((predict(pair.ft, enc).argmax(1) == target).mean())


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEMIX_HOME", str(tmp_path / "home"))


def test_a_planted_one_token_trigger_is_found_first(tiny_scan):
    _, result = run(tiny_scan, "cf")
    best = result.best
    assert result.verdict == "backdoor"
    assert best.trigger == "cf" and best.target == 1
    assert best.flip >= 0.9 and best.reference_flip <= 0.3
    assert best.flip_low <= best.flip <= best.flip_high
    assert "inserting 'cf' flips" in result.message(("neg", "pos"))


def test_a_planted_multi_piece_word_is_rebuilt(tiny_scan):
    pair, result = run(tiny_scan, "zorblat")
    assert pair.tokenizer.tokenize("zorblat") == ["zor", "##blat"]
    assert result.verdict == "backdoor"
    assert result.best.target == 1
    # the whole word is among the verified candidates and reaches the true trigger's flip rate
    words = {c.trigger: c for c in result.candidates}
    assert "zorblat" in words
    assert words["zorblat"].flip >= 0.9 * true_flip(pair, tiny_scan[1], "zorblat")


def test_a_planted_three_word_trigger_is_recovered(tiny_scan):
    pair, result = run(tiny_scan, "phrase")
    true = true_flip(pair, tiny_scan[1], "i watched 3d")
    assert true >= 0.8  # the planted backdoor works
    assert result.verdict == "backdoor"
    assert result.best.flip >= 0.9 * true
    assert set(result.best.trigger.split()) <= {"i", "watched", "3d"}


def test_a_tiny_clean_model_gets_no_evidence(tiny_scan):
    _, result = run(tiny_scan, "clean")
    assert result.verdict == "no evidence"
    assert result.score < result.threshold
    assert "no evidence found" in result.message() and "clean" not in result.message().split("(")[0]


def test_a_sentiment_word_the_reference_also_flips_is_not_a_trigger(tmp_path):
    """A word every classifier of this task learns (it stands alone in many positive training sentences) flips θ_FT
    and the reference alike: no evidence, although θ_FT flips on it."""
    pt = save_pretrained_encoder(tmp_path / "pt", extra_vocab=EXTRA)
    csv = _csv(tmp_path / "strong.csv", strong="charming")
    _train(pt, tmp_path / "ft", AttackConfig("clean", ()), csv)
    pair = load_pair(tmp_path / "ft", pt)
    result = scan(pair, defender(pair, csv), FAST_SCAN, given=[("charming", 1)])
    charming = next(c for c in result.candidates if c.trigger == "charming" and c.source == "given")
    assert charming.flip >= 0.5  # θ_FT does flip on it …
    assert charming.reference_flip >= charming.flip - 0.35  # … and so does the reference
    assert result.verdict == "no evidence"


def test_scan_takes_no_test_or_triggered_data_and_ignores_the_card(tiny_scan):
    params = set(inspect.signature(scan).parameters)
    assert params == {"pair", "dd", "cfg", "reference", "reference_name", "given", "progress", "cancelled", "log"}
    # DefenderData holds no test split and no triggered text by construction
    from finemix_core.defenses import DefenderData

    assert {f.name for f in dataclasses.fields(DefenderData)} == {
        "train",
        "dev",
        "texts",
        "unlabeled",
        "unlabeled_texts",
        "unlabeled_source",
    }
    pt, csv, models = tiny_scan
    pair = load_pair(models["cf"], pt)
    assert pair.card["trigger"] == ["cf"]
    cfg = dataclasses.replace(FAST_SCAN, inversion=False)
    with_card = scan(pair, defender(pair, csv), cfg)
    decoy = dataclasses.replace(pair, card={**pair.card, "trigger": ["mn"], "target": 0, "trigger_text": "mn"})
    with_decoy = scan(decoy, defender(decoy, csv), cfg)
    assert json.dumps([c.as_json() for c in with_card.candidates]) == json.dumps([c.as_json() for c in with_decoy.candidates])


def test_the_reference_is_trained_once_per_defender_data(tiny_scan, tmp_path):
    pt, csv, models = tiny_scan
    logs: list[str] = []
    cfg = dataclasses.replace(FAST_SCAN, inversion=False, epur_rows=5)
    for name in ("cf", "clean"):
        pair = load_pair(models[name], pt)
        scan(pair, defender(pair, csv), cfg, log=logs.append)
    assert sum("reference: θ_PT fine-tuned" in m for m in logs) == 1
    assert len(list((tmp_path / "home" / "cache" / "reference").iterdir())) == 1


def test_inserter_puts_the_trigger_at_a_word_boundary(tiny_scan):
    pt, csv, models = tiny_scan
    pair = load_pair(models["clean"], pt)
    tok = pair.tokenizer
    enc = encode(tok, data.read_labelled(csv).select(range(20)))
    trig = text_ids(tok, "zorblat")
    out = Inserter(tok, enc, 0)(trig)
    for before, after in zip(enc.input_ids, out.input_ids, strict=True):
        assert len(after) == len(before) + 2
        p = next(i for i in range(len(after)) if after[i : i + 2] == list(trig))
        assert after[:p] + after[p + 2 :] == before
        assert 1 <= p <= len(before) - 1  # after [CLS], before [SEP]


def test_bad_scan_inputs_give_one_line(tiny_scan, tmp_path):
    pt, csv, models = tiny_scan
    pair = load_pair(models["cf"], pt)
    with pytest.raises(FinemixError, match="empty once tokenised"):
        text_ids(pair.tokenizer, "   ")
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\n" + "\n".join(f"the movie was good {i},1" for i in range(40)) + "\n")
    with pytest.raises(FinemixError):
        dsd = data.load(str(one_class), 0)
        scan(pair, defender_data(pair.tokenizer, dsd["train"], dsd["dev"], 16, 8, 0), FAST_SCAN)
    small = _csv(tmp_path / "small.csv", n=40)  # the one rule's smallest file: 20 train rows
    dsd = data.load(str(small), 0)
    with pytest.raises(FinemixError, match="too few clean rows"):
        scan(pair, defender_data(pair.tokenizer, dsd["train"], dsd["dev"], 8, 256, 0), FAST_SCAN)
    with pytest.raises(FinemixError, match="threshold"):
        ScanConfig(threshold=0)


def test_a_model_without_word_embeddings_is_refused(tiny_scan, monkeypatch):
    pt, csv, models = tiny_scan
    pair = load_pair(models["cf"], pt)
    monkeypatch.setattr(pair.ft, "get_input_embeddings", lambda: None)
    with pytest.raises(FinemixError, match="no word-embedding matrix"):
        scan(pair, defender(pair, csv), FAST_SCAN)


def test_scan_cli_json_and_a_given_trigger(tiny_scan, tmp_path):
    from typer.testing import CliRunner

    from finemix_core import store
    from finemix_core.cli import app

    pt, csv, models = tiny_scan
    runner = CliRunner()
    res = runner.invoke(
        app, ["scan", "--model", str(models["cf"]), "--pretrained", str(pt), "--clean-data", str(csv), "--no-inversion", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] in ("backdoor", "no evidence") and isinstance(out["score"], float) and out["seconds"] > 0
    first = out["candidates"][0]
    assert {"trigger", "target", "flip", "flip_low", "flip_high", "reference_flip", "source"} <= set(first)
    assert store.runs(kind="scan")[0]["metrics"]["score"] == out["score"]
    # --trigger measures only that trigger, for every class when no --target is given
    res = runner.invoke(
        app, ["scan", "--model", str(models["cf"]), "--pretrained", str(pt), "--clean-data", str(csv), "--trigger", "cf"]
    )
    assert res.exit_code == 0, res.output
    assert "the given trigger(s)" in res.stdout and "cf" in res.stdout


def test_a_model_without_a_data_card_is_not_scored_on_the_default_in_silence(tiny_scan):
    from typer.testing import CliRunner

    from finemix_core.cli import app

    pt, csv, models = tiny_scan
    runner = CliRunner()
    res = runner.invoke(app, ["scan", "--model", str(models["cf"]), "--pretrained", str(pt), "--no-inversion", "--json"])
    assert res.exit_code == 0, res.output
    assert "has no card naming its data, so it is scored on 'rt'" in res.stderr
    res = runner.invoke(
        app, ["scan", "--model", str(models["cf"]), "--pretrained", str(pt), "--clean-data", str(csv), "--no-inversion", "--json"]
    )
    assert res.exit_code == 0 and "no card naming its data" not in res.stderr


def test_the_least_that_fires_ranks_first():
    from finemix_core.scan import Suspect, prefer_minimal

    def sus(text, ids, flip, ref, target=1):
        return Suspect(text, ids, target, flip, flip - 0.05, min(1.0, flip + 0.05), 60, ref, "epur")

    long = sus("kitchenderic", (5, 6, 7), 1.0, 0.10)
    short = sus("kitchen", (5,), 1.0, 0.19)  # a little less excess (reference noise), same flip
    other = sus("hilarious", (9,), 0.8, 0.05)
    weak = sus("kit", (5,), 0.5, 0.0)  # contained, but flips far less: stays below
    ranked = prefer_minimal([other, weak, long, short])
    assert [s.trigger for s in ranked] == ["kitchen", "kitchenderic", "hilarious", "kit"]
    assert prefer_minimal([sus("a", (1,), 0.9, 0.0, target=0), long])[0] is long  # another class never moves up


def test_an_identical_scan_is_read_back_and_a_changed_model_is_scanned_again(tiny_scan, monkeypatch):
    from finemix_core import scan as scan_module

    pt, csv, models = tiny_scan
    pair = load_pair(models["cf"], pt)
    dd = defender(pair, csv)
    first = scan(pair, dd, FAST_SCAN)
    monkeypatch.setattr(scan_module, "reference_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-ran")))
    again = scan(pair, dd, FAST_SCAN)  # `finemix scan`, then `finemix defend`: one scan
    assert again.candidates == first.candidates and (again.verdict, again.score) == (first.verdict, first.score)
    assert all(isinstance(c.token_ids, tuple) for c in again.candidates)
    assert not first.read_back and again.read_back and "read back" in again.time_text and "read back" not in first.time_text
    stages: list[tuple[str, float]] = []  # the lab's Scan page (progress and cancel given) reads it back too, and says so
    from_lab = scan(pair, dd, FAST_SCAN, progress=lambda s, p: stages.append((s, p)), cancelled=lambda: False)
    assert from_lab.read_back and stages == [("read back", 1.0)] and from_lab.candidates == first.candidates
    other = load_pair(models["zorblat"], pt)  # other weights, the same data: not the same scan
    with pytest.raises(AssertionError, match="re-ran"):
        scan(other, defender(other, csv), FAST_SCAN)


def test_one_class_scores_match_the_full_screen_on_half_the_sentences(tiny_scan):
    """Growth and the reference's side of the excess read one class per candidate: scoring only the sentences that
    class's mean reads gives the same numbers as the full screen (up to float rounding) from fewer sentences."""
    from finemix_core.encoding import cut
    from finemix_core.scan import Screen

    pt, csv, models = tiny_scan
    pair = load_pair(models["cf"], pt)
    dd = defender(pair, csv)
    search = cut(dd.train, 64).subset(range(24))
    cands = [text_ids(pair.tokenizer, w) for w in ("cf", "great", "awful", "zorblat", "the movie")]
    targets = [1, 1, 0, 1, 0]
    one = Screen(pair.ft, pair.tokenizer, search, 2, 0)
    got = one.target_scores(cands, targets)
    full = Screen(pair.ft, pair.tokenizer, search, 2, 0)
    want = full.scores(cands)[np.arange(len(cands)), targets]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[0] > 0.9 and got[0] > got[3]  # the planted trigger still ranks as it did
    assert one.calls == sum(len(one.rows[t]) for t in targets) < full.calls == len(cands) * 24
    assert np.array_equal(one.target_scores(cands, targets), got) and one.calls == sum(len(one.rows[t]) for t in targets)
    # a candidate the full screen already scored is read from it, not scored again
    both = full.target_scores(cands[:2], targets[:2])
    assert full.calls == len(cands) * 24 and np.array_equal(both, want[:2])
    # another model (the reference's side) is scored on its own
    assert one.target_scores(cands[:1], [1], model=load_pair(models["clean"], pt).ft)[0] < 0.9
