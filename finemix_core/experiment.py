"""One experiment's context, shared by the CLI (defend, sweep, report), the benchmark and the lab:
the model pair, the data, the tokenised test set with its triggered copy, and the clean ASR floor.

Loading is done once; defenses then run on private copies and are scored on the same sets.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets

from finemix_core import data, store
from finemix_core.atomic import save_dir
from finemix_core import evaluate as scoring
from finemix_core import hardware
from finemix_core.config import (
    DEFAULT_CLEAN_SIZE,
    DEFAULT_DATASET,
    DEFAULT_TARGET,
    MAX_LENGTH,
    EvalConfig,
    RecoveryConfig,
    zoo_dir,
)
from finemix_core.defenses import DefenderData, DefenseConfig, DefenseResult, concrete_precision, defend, defender_data
from finemix_core.errors import FinemixError
from finemix_core.evaluate import EvalSet, Scores, make_eval_set, predict, score
from finemix_core.mixing import MixConfig, mix_into
from finemix_core.models import CARD_NAME, ModelPair, load_classifier, load_pair
from finemix_core.remembered import Remember
from finemix_core.train import Progress


@dataclass
class Context:
    pair: ModelPair
    data_name: str
    split_seed: int
    dsd: DatasetDict
    eval_set: EvalSet
    floor: float | None  # ASR of the clean reference model on the same triggered set (None: unknown)
    floor_model: str | None
    device: torch.device
    clean_data: str | None = None  # a user's CSV that is all the defender has (None: the dataset's train/dev splits)
    clean_splits: DatasetDict | None = None  # that CSV parted by the one rule (the defender reads train and dev only)
    extra_unlabeled: Dataset | None = None  # clean unlabelled texts the user gave (--unlabeled)
    extra_unlabeled_source: str | None = None
    # per triggered test example: did the clean model call it the target? (the floor is their mean; a prefix of the
    # triggered set, such as the lab's live set, reads its own floor from them without scoring again)
    floor_hits: np.ndarray | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names: the CSV's own, the registry's, θ_FT's config's, else 'label k'."""
        return data.label_names(self.data_name, self.pair.num_labels, self.dsd, self.pair.ft.config.id2label)

    @property
    def trigger_text(self) -> str | None:
        return "+".join(self.eval_set.trigger) if self.eval_set.trigger else None

    def defender(self, clean_size: int = 128, dev_size: int = 256, seed: int = 0, min_pool: int = 0) -> DefenderData:
        """The defender's data: labelled train and dev, plus the unlabelled pool (never test, never triggered).

        Built-in data: the clean set comes from the train split, dev accuracy from the first `dev_size` dev examples, and
        the rest of the dev split is the unlabelled pool (θ_FT never trained on it). A user's CSV, parted by the one rule
        (`data.csv_parts`): the labelled set is drawn from its train part, the train rows not drawn are the pool, dev is
        its dev part. `--unlabeled` texts join the pool. With `min_pool`, a pool smaller than that is topped up with
        offline general text (`data.general_text`: never from the model's own data set nor equal to a row of the CSV).
        """
        if self.clean_data is None:
            train, dev = self.dsd["train"], self.dsd["dev"]
            n_dev = dev_examples(len(dev), dev_size)
            pool = dev.select(range(n_dev, len(dev)))
            dev = dev.select(range(n_dev))
            what = f"{self.data_name} dev split beyond its first {n_dev} examples"
        else:
            train, dev = self.clean_splits["train"], self.clean_splits["dev"]
            clean_size = self.labelled_size(clean_size)
            pool = data.clean_split(train, clean_size, seed)[1]
            what = f"{data.display_name(self.clean_data)} train rows beyond the {clean_size} labelled ones"
        parts = [(pool, what)] if len(pool) else []
        if self.extra_unlabeled is not None:
            parts.append((self.extra_unlabeled, self.extra_unlabeled_source))
        have = sum(len(p) for p, _ in parts)
        if min_pool > have and data.text_columns(train) == ["text"]:
            general, what = data.general_text(min_pool - have, seed, *self._general_guard())
            if len(general):
                parts.append((general, what))
        merged = concatenate_datasets([p.cast(parts[0][0].features) for p, _ in parts]) if parts else None
        source = " + ".join(f"{w} ({len(p)})" for p, w in parts) or "none"
        # texts are cut to what the model can read (a small model's position table can be shorter than MAX_LENGTH)
        max_length = min(MAX_LENGTH, getattr(self.pair.ft.config, "max_position_embeddings", MAX_LENGTH))
        return defender_data(
            self.pair.tokenizer, train, dev, clean_size, dev_size, seed, max_length, unlabeled=merged, unlabeled_source=source
        )

    def _general_guard(self) -> tuple[set[str], set[str]]:
        """(registry sets general text must not come from: the scored set and the one θ_FT was trained on, texts it must
        not repeat: every row of the defender's CSV, its held-out part included)."""
        exclude = {self.data_name, str(self.pair.card.get("dataset") or "")}
        avoid: set[str] = set()
        if self.clean_splits is not None:
            for part in self.clean_splits.values():
                avoid.update(part["text"])
        if is_csv(self.data_name):
            for part in self.dsd.values():
                avoid.update(part["text"])
        return exclude, avoid

    def labelled_size(self, clean_size: int) -> int:
        """The labelled set a run takes: `clean_size`; from a CSV whose train part holds fewer rows, all of them when
        `clean_size` is the default (a user's few hundred rows must fit the default: 212 rows leave 112), else refused
        with the fix."""
        if self.clean_data is None:
            return clean_size
        train = self.clean_splits["train"]
        if clean_size <= len(train):
            return clean_size
        if clean_size == DEFAULT_CLEAN_SIZE:
            return len(train)
        raise FinemixError(
            f"clean-size {clean_size} is larger than the {len(train)} train rows of {data.display_name(self.clean_data)} "
            f"(the one rule keeps its dev and held-out parts apart); lower --clean-size to at most {len(train)} "
            "or bring more labelled rows"
        )

    def parts(self, clean_size: int = 128, dev_size: int = 256, check: bool = True) -> "DataParts":
        """How the data is parted for this run (the CLI prints it, the card and the lab's caption show it); with
        `check`, a labelled set larger than a CSV's train part is refused here, before any work."""
        if self.clean_data is None:
            n_dev = dev_examples(len(self.dsd["dev"]), dev_size)
            return DataParts(
                self.data_name, None, min(clean_size, len(self.dsd["train"])), n_dev, len(self.dsd["dev"]) - n_dev,
                len(self.dsd["test"]), self.data_name, self.split_seed,
            )
        train, dev = self.clean_splits["train"], self.clean_splits["dev"]
        labelled = self.labelled_size(clean_size) if check else min(clean_size, len(train))
        held_out = len(self.clean_splits["test"])
        return DataParts(
            data.display_name(self.clean_data), len(train) + len(dev) + held_out, labelled, min(dev_size, len(dev)),
            len(train) - labelled, held_out, self.data_name if self.data_name != self.clean_data else "held-out part",
            self.split_seed, data.label_names(self.clean_data, self.pair.num_labels, self.clean_splits),
        )


@dataclass(frozen=True)
class DataParts:
    """The defender's parts of the data and what the scores are measured on."""

    source: str  # the CSV's file name, or the registry set's name
    rows: int | None  # labelled rows in the CSV (None: a registry set)
    labelled: int  # the labelled clean set (fine-tuning, the scan's search set)
    dev: int  # dev rows: every dev-only choice (auto-ρ)
    pool: int  # unlabelled pool (recovery distils on it; E-PUR counts in it)
    held_out: int  # test rows; for a CSV, never seen by the defense
    scored_on: str  # the data the live and reported numbers are measured on
    split_seed: int
    classes: tuple[str, ...] = ()  # a CSV's class names by id (so a user can check the mapping of string labels)

    def line(self) -> str:
        if self.rows is None:
            return (
                f"data {self.source} (split seed {self.split_seed}): {self.labelled} labelled from train · {self.dev} dev · "
                f"{self.pool} unlabelled pool (the rest of dev) · {self.held_out} test"
            )
        scored = "scored on its held-out part" if self.scored_on == "held-out part" else f"scored on {self.scored_on}"
        named = [f"{i} = {n}" for i, n in enumerate(self.classes) if n != f"label {i}"]
        return (
            f"clean data {self.source} ({self.rows} rows, split seed {self.split_seed}; one rule, README 'Your own clean "
            f"data'): {self.labelled} labelled · {self.dev} dev · {self.pool} unlabelled pool · {self.held_out} held out; "
            f"{scored}" + (f"; classes {', '.join(named)}" if named else "")
        )


def data_warning(card: dict, model: str, data_name: str, fix: str = "pass your task's CSV (--clean-data / --data)") -> str | None:
    """One line when a model without a card naming its data is scored on data nobody chose (the default set): a news
    classifier scored on movie reviews says nothing about either. `fix` says how to choose (CLI flags, or the lab's)."""
    if card.get("dataset") or data_name != DEFAULT_DATASET:
        return None
    return f"{model} has no card naming its data, so it is scored on '{data_name}' (the default); if that is not its task, {fix}"


def precision_note(recovery: RecoveryConfig, device: torch.device, fix: str = "--precision fp32 is faster here") -> str | None:
    """One line when bf16 recovery was asked for explicitly on a device without native bf16 (emulated: several times
    slower than fp32; the default "auto" never picks it there); `fix` says how to switch."""
    if recovery.precision != "bf16" or hardware.bf16_supported(torch.device(device)):
        return None
    return f"this {torch.device(device).type} has no native bf16, so recovery's bf16 steps run slower; {fix}"


def label_warning(ctx: Context) -> str | None:
    """One line when θ_FT scores below chance on a CSV's dev part: the file's label ids (or the order its class names
    were mapped in) probably do not match the model's, and every number would be measured against wrong labels."""
    from finemix_core.encoding import encode

    if ctx.clean_data is None:
        return None
    dev = ctx.clean_splits["dev"]
    k = ctx.pair.num_labels
    acc = float((predict(ctx.pair.ft, encode(ctx.pair.tokenizer, dev)).argmax(1) == np.asarray(dev["label"])).mean())
    if acc >= 1 / k:
        return None
    classes = ", ".join(f"{i} = {n}" for i, n in enumerate(data.label_names(ctx.clean_data, k, ctx.clean_splits)))
    return (
        f"θ_FT gets {acc:.2f} on the {len(dev)} dev rows of {data.display_name(ctx.clean_data)}, below chance (1/{k}): its labels "
        f"probably do not match the model's ids ({classes}); give integer ids in the model's order or a label_name column"
    )


def dev_examples(n_dev_split: int, dev_size: int) -> int:
    """How many dev-split examples measure dev accuracy: up to `dev_size`, and never more than half of a small split,
    so the other half can serve as the unlabelled pool (Rotten Tomatoes: 256 of 1,275, the other 1,019 are the pool)."""
    return max(1, min(dev_size, n_dev_split // 2)) if n_dev_split else 0


def prepare(
    model: str,
    pretrained: str = "default",
    data_name: str | None = None,
    split_seed: int | None = None,
    trigger: tuple[str, ...] | None = None,
    target: int | None = None,
    eval_limit: int | None = None,
    floor_model: str | None = None,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
    clean_data: str | None = None,
    unlabeled: str | None = None,
    pair: ModelPair | None = None,
) -> Context:
    """Load the pair (or take `pair`, already loaded: the lab shares one per model) and the data; the trigger and
    dataset default to the model's card.

    `data_name` is what the defended model is scored on (its test split); `clean_data` a CSV the defender holds
    (parted by the one rule, `data.csv_parts`); `unlabeled` a .txt/.csv of clean unlabelled texts for recovery.
    """
    pair = pair if pair is not None else load_pair(model, pretrained, allow_pickle=allow_pickle)
    if clean_data is not None and (clean_data in data.OFFLINE or clean_data in data.ONLINE):
        data_name, clean_data = data_name or clean_data, None  # a named dataset: its own train/dev splits
    extra = data.read_unlabeled(unlabeled) if unlabeled else None
    scoring = prepare_scoring(
        pair.card,
        pair.tokenizer,
        pair.num_labels,
        pair.ft_source,
        data_name or pair.card.get("dataset") or clean_data,
        split_seed,
        trigger,
        target,
        eval_limit,
        floor_model,
        device,
        pair.label2id,
    )
    name, seed, dsd, es, floor, floor_src = (
        scoring.data_name,
        scoring.split_seed,
        scoring.dsd,
        scoring.eval_set,
        scoring.floor,
        scoring.floor_model,
    )
    device = torch.device(device)
    if clean_data is None and is_csv(name):
        clean_data = name  # scored on a CSV: the defender holds its train and dev parts (the one rule), never its test
    clean_splits = _clean_splits(clean_data, name, dsd, seed, pair.label2id) if clean_data is not None else None
    return Context(
        pair,
        name,
        seed,
        dsd,
        es,
        floor,
        floor_src,
        device,
        clean_data,
        clean_splits,
        extra,
        f"{Path(unlabeled).name}" if unlabeled else None,
        scoring.floor_hits,
    )


def _clean_splits(clean_data: str, name: str, dsd: DatasetDict, seed: int, label2id: dict | None = None) -> DatasetDict:
    """The defender's parts of a CSV by the one rule (`data.csv_parts`): its train part (labelled set + pool) and dev
    part; the held-out part is never the defender's. When the CSV is also the scoring data, these are `dsd`'s own."""
    parts = dsd if name == clean_data else data.load(clean_data, seed, label2id)
    if data.text_columns(parts) != data.text_columns(dsd):
        kinds = {True: "a sentence-pair dataset", False: "a single-sentence dataset"}
        raise FinemixError(
            f"{clean_data} is {kinds[data.text_columns(parts) == ['text_a', 'text_b']]} but the model is scored on "
            f"{kinds[data.text_columns(dsd) == ['text_a', 'text_b']]} ({name}); pick matching data"
        )
    return DatasetDict(train=parts["train"], dev=parts["dev"], test=parts["test"])  # test: counted, never the defender's


def is_csv(name: str | None) -> bool:
    """A user's CSV rather than a registry set."""
    return bool(name) and name not in data.OFFLINE and name not in data.ONLINE


def prepare_defender(
    model: str,
    pretrained: str = "default",
    clean_data: str | None = None,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
    unlabeled: str | None = None,
) -> Context:
    """The pair and the defender's data only (what `finemix scan` needs): no test set is tokenised, no trigger read,
    no floor model loaded. `ctx.defender(...)` then parts the data exactly as `prepare`'s context would."""
    pair = load_pair(model, pretrained, allow_pickle=allow_pickle)
    if clean_data is not None and (clean_data in data.OFFLINE or clean_data in data.ONLINE):
        name, clean_data = clean_data, None
    else:
        name = pair.card.get("dataset") or clean_data or DEFAULT_DATASET
    seed = pair.card.get("split_seed", 0)
    dsd = data.load(name, seed, pair.label2id)
    n_labels = data.num_labels(dsd)
    if n_labels > pair.num_labels:
        raise FinemixError(
            f"the data has labels up to {n_labels - 1} but the model has {pair.num_labels} outputs; pick matching data"
        )
    if clean_data is None and is_csv(name):
        clean_data = name
    clean_splits = _clean_splits(clean_data, name, dsd, seed, pair.label2id) if clean_data is not None else None
    extra = data.read_unlabeled(unlabeled) if unlabeled else None
    empty = make_eval_set(pair.tokenizer, dsd["test"].select(range(min(1, len(dsd["test"])))), None, None)
    return Context(
        pair,
        name,
        seed,
        dsd,
        empty,
        None,
        None,
        torch.device(device),
        clean_data,
        clean_splits,
        extra,
        f"{Path(unlabeled).name}" if unlabeled else None,
    )


@dataclass
class Scoring:
    """What a model is scored on: the data, its test set with the triggered copy, and the clean floor there."""

    data_name: str
    split_seed: int
    dsd: DatasetDict
    eval_set: EvalSet
    floor: float | None
    floor_model: str | None
    floor_hits: np.ndarray | None = None  # per triggered example: the clean model predicted the target


def prepare_scoring(
    card: dict,
    tokenizer,
    num_labels: int,
    ft_source: str,
    data_name: str | None = None,
    split_seed: int | None = None,
    trigger: tuple[str, ...] | None = None,
    target: int | None = None,
    eval_limit: int | None = None,
    floor_model: str | None = None,
    device: torch.device | str = "cpu",
    label2id: dict[str, int] | None = None,
) -> Scoring:
    """The data, test set and clean floor for a classifier with this card (dataset, split seed, trigger, target as
    defaults); shared by `prepare` (model pairs) and `finemix evaluate` (any classifier)."""
    name = data_name or card.get("dataset") or DEFAULT_DATASET
    seed = split_seed if split_seed is not None else card.get("split_seed", 0)
    dsd = data.load(name, seed, label2id)
    n_labels = data.num_labels(dsd)
    if n_labels > num_labels:
        raise FinemixError(f"the data has labels up to {n_labels - 1} but the model has {num_labels} outputs; pick matching data")
    if data.text_columns(dsd) == ["text_a", "text_b"] and card.get("dataset") and card.get("dataset") != name:
        raise FinemixError(
            f"{name} is a sentence-pair dataset but the model was trained on {card['dataset']}; pick matching data"
        )
    pieces = trigger or (tuple(card["trigger"]) if card.get("trigger") else None)
    tgt = target if target is not None else card.get("target", DEFAULT_TARGET)
    if pieces is not None and not 0 <= tgt < num_labels:
        raise FinemixError(f"target {tgt} outside the model's labels 0..{num_labels - 1}")
    es = make_eval_set(tokenizer, dsd["test"], pieces, tgt if pieces else None, EvalConfig(limit=eval_limit))
    floor, floor_src, hits = None, None, None
    if pieces:
        floor_src = floor_model or _zoo_clean_for(name, seed, ft_source)
        if floor_src is not None:
            clean, _ = load_classifier(floor_src)
            # the floor needs the triggered pass only (scoring CACC too would be a second, wasted pass over the test set)
            hits = predict(clean.to(torch.device(device)), es.triggered).argmax(1) == es.target
            floor = float(hits.mean())
    return Scoring(name, seed, dsd, es, floor, floor_src, hits)


def _zoo_clean_for(data_name: str, split_seed: int, ft_source: str) -> str | None:
    """The zoo's clean model, when it was trained on the same data and split (else its floor means nothing)."""
    clean = zoo_dir() / "clean"
    card_file = clean / CARD_NAME
    if not card_file.is_file() or Path(ft_source).resolve() == clean.resolve():
        return None
    card = json.loads(card_file.read_text())
    return str(clean) if card.get("dataset") == data_name and card.get("split_seed") == split_seed else None


def evaluate(ctx: Context, model: torch.nn.Module) -> Scores:
    return score(model.to(ctx.device), ctx.eval_set)


def mixed_scores(ctx: Context, rho: float, mode: str = "random", seed: int = 0, model: torch.nn.Module | None = None) -> Scores:
    """The mix-only path (no fine-tuning) at one ρ, written into `model` (a private working copy) when given."""
    model = model if model is not None else ctx.pair.working_copy()
    mix_into(ctx.pair, MixConfig(rho=rho, mode=mode, seed=seed), model.state_dict())
    return evaluate(ctx, model)


@dataclass(frozen=True)
class RunRow:
    """One defense run as every layer sees it: CLI tables, the SQLite store, the report, the lab (as_dict for JSON)."""

    model: str  # zoo name or θ_FT folder
    attack: str | None  # from the card, when known
    method: str
    seed: int
    clean_size: int  # labelled clean examples
    dev_size: int  # labelled dev examples that measured dev accuracy
    rho: float | None  # the ρ used (auto's choice when auto)
    rho_auto: bool
    delta: float  # auto-ρ / prune-ratio tolerance
    prune_ratio: float | None
    epur_k: int | None  # rows E-PUR reset (None: no E-PUR)
    flagged_top: list[str]  # E-PUR's first flagged tokens
    dev_acc: float  # clean dev accuracy of the defended model
    ft_dev_acc: float  # … and of θ_FT
    search: list[dict]  # every candidate of the dev-only search: knob, value, dev_acc, passed
    unlabeled_n: int  # unlabelled texts distilled on (0 without recovery)
    unlabeled_source: str
    recovery: dict | None  # RecoveryConfig fields when the method distils
    clean_data: str | None  # a user's CSV the defender held (None: the dataset's own splits)
    cacc: float  # on the test split
    asr: float | None
    target_bias: float | None
    n_clean: int
    n_nontarget: int
    asr_floor: float | None
    data: str
    split_seed: int
    trigger: str | None
    train: dict  # the TrainConfig used
    seconds: float  # the defense itself, selection included (scoring excluded)
    device: str
    parts: str | None = None  # how the data was parted (DataParts.line): labelled · dev · pool · held-out
    suspects: list[str] = field(default_factory=list)  # scan's suspected triggers trigger-aware recovery used (estimates)
    consistency_copies: int = 0  # triggered copies recovery trained on (pool + labelled)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_defense(
    ctx: Context,
    cfg: DefenseConfig,
    clean_size: int = 128,
    dev_size: int = 256,
    progress: Progress | None = None,
    log=None,
    scan_result=None,
    remember: Remember = Remember.OFF,
) -> tuple[DefenseResult, RunRow]:
    """Defend, score on test, and return (result, its row). `scan_result`: a scan of θ_FT on the same defender parts
    (`run_scan`), reused by trigger-aware recovery instead of scanning again. `remember`: see finemix_core.remembered."""
    cfg = concrete_precision(cfg, ctx.device)  # the row says the arithmetic that ran ("auto" made concrete)
    clean_size = ctx.labelled_size(clean_size)  # the row says the labelled set that ran (a small CSV's whole train part)
    dd = ctx.defender(clean_size, dev_size, cfg.seed, min_pool=cfg.recovery.min_pool if cfg.distills else 0)
    result = defend(ctx.pair, dd, cfg, ctx.device, progress, log, scan_result, remember)
    scores = evaluate(ctx, result.model)
    row = RunRow(
        model=ctx.pair.card.get("name", ctx.pair.ft_source),
        attack=ctx.pair.card.get("attack"),
        method=cfg.method,
        seed=cfg.seed,
        clean_size=clean_size,
        dev_size=len(dd.dev),
        rho=result.rho,
        rho_auto=result.rho_auto,
        delta=cfg.delta,
        prune_ratio=result.prune_ratio,
        epur_k=cfg.epur.k if cfg.uses_epur else None,
        flagged_top=result.flagged[:10],
        dev_acc=result.dev_acc,
        ft_dev_acc=result.ft_dev_acc,
        search=[dataclasses.asdict(c) for c in result.search],
        unlabeled_n=result.unlabeled_used,
        unlabeled_source=result.unlabeled_source,
        recovery=dataclasses.asdict(cfg.recovery) if cfg.distills else None,
        clean_data=ctx.clean_data,
        cacc=scores.cacc,
        asr=scores.asr,
        target_bias=scores.target_bias,
        n_clean=scores.n_clean,
        n_nontarget=scores.n_nontarget,
        asr_floor=ctx.floor,
        data=ctx.data_name,
        split_seed=ctx.split_seed,
        trigger=ctx.trigger_text,
        train=dict(cfg.train.__dict__),
        seconds=round(result.seconds, 2),
        device=ctx.device.type,
        parts=ctx.parts(clean_size, dev_size).line(),
        suspects=result.suspects,
        consistency_copies=result.consistency_copies,
    )
    return result, row


def save_defended(
    ctx: Context, result: DefenseResult, row: RunRow, out: Path, overwrite: bool = False, extra: dict | None = None
) -> Path:
    """Write the defended model as a standard HF folder + finemix.json (plus `extra` fields, e.g. the scan's
    estimate), atomically."""
    card = {
        **row.as_dict(),
        "defended_from": ctx.pair.ft_source,
        "pretrained": ctx.pair.pt_source,
        "flagged": result.flagged,
        "trigger_list": list(ctx.eval_set.trigger or ()),
        "target": ctx.eval_set.target,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # a defended model is itself a model: keep the fields `finemix evaluate` and the lab read
        "name": f"{row.model}-{row.method}",
        "dataset": ctx.data_name,
        "trigger": list(ctx.eval_set.trigger or ()),
        **(extra or {}),
    }

    def write(tmp: Path) -> None:
        result.model.cpu().save_pretrained(tmp)
        ctx.pair.tokenizer.save_pretrained(tmp)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2, default=str))

    return save_dir(Path(out), write, overwrite)


def record(kind: str, row: RunRow | dict) -> int:
    """Store one run (a RunRow, or a dict of its fields plus extras such as `out`)."""
    row = row.as_dict() if isinstance(row, RunRow) else row
    metrics = {
        k: row.get(k)
        for k in ("cacc", "asr", "target_bias", "asr_floor", "rho", "prune_ratio", "dev_acc", "ft_dev_acc", "seconds")
    }
    return store.record(kind, str(row.get("model")), row.get("method"), row, metrics)


def parse_range(spec: str) -> list[float]:
    """'0:1:0.1' → [0, 0.1, …, 1]; '0.1,0.3' → [0.1, 0.3]."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0:
                raise ValueError
            values = list(np.round(np.arange(start, stop + step / 2, step), 6))
        else:
            values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise FinemixError(f"cannot read ρ values '{spec}'; write START:STOP:STEP (e.g. 0:1:0.1) or a list 0.1,0.3") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise FinemixError(f"ρ values '{spec}' must be non-empty and within [0, 1]")
    return [float(v) for v in values]


def run_scan(
    ctx: Context,
    cfg=None,
    clean_size: int = 128,
    dev_size: int = 256,
    seed: int = 0,
    given: tuple[tuple[str, int], ...] = (),
    model: torch.nn.Module | None = None,
    progress=None,
    cancelled=None,
    log=None,
):
    """Scan θ_FT (or `model`, e.g. a defended one, in its place) on the defender's data parted as `defend` parts it.
    With `given` and a cfg that searches nothing, only those triggers are measured."""
    from finemix_core.scan import scan

    dd = ctx.defender(clean_size, dev_size, seed)  # a small CSV's default: its whole train part (Context.defender)
    pair = ctx.pair if model is None else dataclasses.replace(ctx.pair, ft=model.cpu().eval())
    return scan(pair, dd, cfg, given=given, progress=progress, cancelled=cancelled, log=log)


def measure_only():
    """A scan config that searches nothing: it verifies the given triggers only."""
    from finemix_core.scan import ScanConfig

    return ScanConfig(epur_rows=0, inversion=False)


def scan_estimate(before, after) -> dict:
    """What a defended model's card records about a trigger the scan suspected (never ground truth)."""
    best = before.best
    measured = next((c for c in after.candidates if c.source == "given"), None) if after is not None else None
    return {
        "estimate": True,
        "suspected_trigger": best.trigger if best else None,
        "suspected_target": best.target if best else None,
        "verdict_before": before.verdict,
        "score_before": round(before.score, 4),
        "flip_before": round(best.flip, 4) if best else None,
        "flip_after": round(measured.flip, 4) if measured else None,
        "reference_flip": round(best.reference_flip, 4) if best else None,
        "note": "ASR estimates for a trigger found by `finemix scan` from clean data alone, not the true trigger",
    }


def record_scan(model_name: str, result, extra: dict | None = None) -> int:
    """Store one scan in the history (kind 'scan')."""
    best = result.best
    metrics = {
        "score": result.score,
        "flip": best.flip if best else None,
        "reference_flip": best.reference_flip if best else None,
        "seconds": result.seconds,
    }
    return store.record("scan", model_name, "scan", {**result.as_json(), **(extra or {})}, metrics)
