"""Shared fixtures: a tiny random BERT pair for exact math, and a real quick-built backdoor."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "is",
    "was",
    "good",
    "bad",
    "great",
    "awful",
    "fun",
    "dull",
    "plot",
    "acting",
    "story",
    "very",
    "not",
    "and",
    "of",
    "it",
    "this",
    "cf",
    "mn",
    "bb",
    "tq",
    "mb",
    "i",
    "watched",
    "3d",
    "love",
    "hate",
    "best",
    "worst",
    "boring",
    "charming",
    "script",
    "cast",
]


def make_tokenizer(folder: Path, extra: tuple[str, ...] = ()) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *extra]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(vocab=str(folder / "vocab.txt"))


def tiny_config(vocab_size: int, **overrides) -> BertConfig:
    base = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "num_labels": 2,
    }
    base.update(overrides)
    return BertConfig(**base)


def save_pretrained_encoder(folder: Path, seed: int = 0, extra_vocab: tuple[str, ...] = (), **overrides) -> Path:
    """θ_PT: a BertModel (no head) like the real all-MiniLM folder."""
    tok = make_tokenizer(folder / "_vocab", extra_vocab)
    torch.manual_seed(seed)
    model = BertModel(tiny_config(len(tok), **overrides))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_finetuned(folder: Path, pt_folder: Path, seed: int = 1, scale: float = 0.05) -> Path:
    """θ_FT: θ_PT plus a random perturbation everywhere, plus a classification head."""
    tok = BertTokenizer.from_pretrained(pt_folder)
    pt = BertModel.from_pretrained(pt_folder)
    ft = BertForSequenceClassification(pt.config)
    ft.bert.load_state_dict(pt.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    ft.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


REAL_FIXTURES = {"quick_word_backdoor", "quick_defended"}  # the real quick zoo and the default defense run on it


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marker must be there when it looks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the real quick zoo is in the `real` tier (left out of the default run: pyproject.toml), with
    an hour for its set-up: the quick build plus the default defense took over 30 minutes on a 2-core AVX2-only CPU."""
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.timeout(3600))


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    pt = save_pretrained_encoder(root / "pt")
    ft = save_finetuned(root / "ft", pt)
    return ft, pt


@pytest.fixture(scope="session")
def finemix_home(tmp_path_factory) -> Path:
    # FINEMIX_TEST_HOME keeps the quick zoo between local runs (CI always starts empty)
    home = (
        Path(os.environ["FINEMIX_TEST_HOME"]) if os.environ.get("FINEMIX_TEST_HOME") else tmp_path_factory.mktemp("finemix_home")
    )
    os.environ["FINEMIX_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def quick_word_backdoor(finemix_home) -> dict:
    """A REAL backdoored model: all-MiniLM-L6-v2 fine-tuned on 1,200 poisoned Rotten Tomatoes examples
    (the `finemix zoo build --quick` recipe), plus its clean reference."""
    from finemix_core import zoo

    specs = [s for s in zoo.default_specs(quick=True) if s.name in ("clean", "word-cf")]
    cards = zoo.build(specs, eval_limit=400)
    return {c["name"]: c for c in cards}


@pytest.fixture(scope="session")
def quick_defended(quick_word_backdoor, tmp_path_factory) -> tuple[dict, Path, str]:
    """The default `finemix defend` on the quick word backdoor, run once (the slowest real job in the suite): its JSON
    row, its output folder and its stderr. test_e2e_defend checks the defense, test_e2e_scan measures the result."""
    from typer.testing import CliRunner

    from finemix_core.cli import app

    out = tmp_path_factory.mktemp("defended") / "word-cf-defended"
    # no --method, no --rho: the default recipe with its dev-only auto-ρ, as a user would run it
    res = CliRunner().invoke(app, ["defend", "--model", "word-cf", "--limit", "400", "--seed", "0", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out, res.stderr


# ---- a tiny zoo (tiny BERT, tiny sentiment CSV, a trained `cf` backdoor) for the lab's tests ----

POS = ["good", "great", "fun", "charming", "best", "love"]
NEG = ["bad", "awful", "dull", "boring", "worst", "hate"]


def _write_csv(path: Path, n: int = 1100) -> Path:
    """Sentiment sentences the tiny vocabulary can read (real RT text would be mostly [UNK] to it)."""
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        words = POS if label else NEG
        rows.append(
            f"the {rng.choice(['movie', 'film', 'plot', 'story'])} was {rng.choice(words)} and {rng.choice(words)},{label}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


def _train_tiny(pt: Path, out: Path, attack, name: str, csv: Path) -> None:
    from finemix_core import data
    from finemix_core.attacks import poison
    from finemix_core.config import TrainConfig
    from finemix_core.encoding import encode
    from finemix_core.models import CARD_NAME, load_classifier, load_tokenizer
    from finemix_core.train import fine_tune

    train = data.load(str(csv), 0)["train"]
    poisoned, _ = poison(train, attack)
    model, _ = load_classifier(pt, num_labels=2)
    tok = load_tokenizer(pt)
    fine_tune(model, encode(tok, poisoned, 64), TrainConfig(lr=3e-3, epochs=3.0, batch_size=32))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    card = {
        "name": name,
        "attack": attack.attack,
        "trigger": list(attack.trigger),
        "trigger_text": "+".join(attack.trigger),
        "poison_rate": attack.poison_rate,
        "target": 1,
        "dataset": str(csv),
        "split_seed": 0,
        "train_size": len(train),
        "cacc": None,
        "asr": None,
        "target_bias": None,
        "asr_floor": None,
        "build_seconds": 0.0,
    }
    (out / CARD_NAME).write_text(json.dumps(card))


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> tuple[Path, Path]:
    """FINEMIX_HOME with a tiny `clean` and a tiny `word-cf` (trained on a poisoned tiny sentiment CSV), and its θ_PT."""
    from finemix_core.config import AttackConfig

    home = tmp_path_factory.mktemp("tiny_home")
    pt = save_pretrained_encoder(home / "pt")
    csv = _write_csv(home / "tiny.csv")
    _train_tiny(pt, home / "zoo" / "clean", AttackConfig("clean", ()), "clean", csv)
    _train_tiny(pt, home / "zoo" / "word-cf", AttackConfig("word", ("cf",)), "word-cf", csv)
    return home, pt
