"""Audit a model from clean data alone: is there a backdoor, what is its trigger, how often does it fire?

Input: θ_FT, θ_PT and the defender's clean labelled data (`DefenderData`, the same boundary as `defend`: no test
split, no triggered text, no card — the pair's card is dropped on entry). Three cheap-first candidate sources:

1. E-PUR: the rows whose embedding drifted far for their clean frequency, each alone, and whole words rebuilt from
   them (an uncommon word is several WordPiece rows: an initial piece followed by `##` pieces, ordered by the model).
2. Trigger inversion (DBS/PICCOLO family): a relaxed trigger — one softmax over the vocabulary per position — inserted
   into a few clean sentences and optimised to move them to class t while a clean reference keeps its own answer
   (that term keeps sentiment words out); the temperature is annealed so the distribution ends near one-hot, then it
   is decoded to real tokens.
3. Growth: the best candidates are grown a token at a time (left or right, from the best single tokens) while the
   target probability rises: multi-word phrases and multi-piece words.

Every candidate is first screened on clean search sentences, then the finalists are **verified** on held-aside
sentences (the defender's dev set, never searched on): inserted at random word boundaries into sentences that θ_FT does
not already put in class t, flip rate with a Wilson interval, beside the flip rate of a **reference** that cannot carry
this backdoor (θ_PT fine-tuned on the labelled clean set alone, trained once per defender data and cached; or a model
the caller passes, such as the defended one). Candidates rank by excess flip; the verdict's score is the best excess.

Insertion happens on token ids (the sentences are tokenised once), at word boundaries, as `triggers.insert_trigger`
does on text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from finemix_core.atomic import save_dir, write_bytes
from finemix_core.config import TrainConfig, finemix_home
from finemix_core.defender import DefenderData
from finemix_core.encoding import Encoded, concat, cut
from finemix_core.epur import EpurConfig, embedding_key, table
from finemix_core.errors import FinemixError
from finemix_core.evaluate import predict, wilson
from finemix_core.models import ModelPair, hash_weights, load_classifier
from finemix_core.train import fine_tune
from finemix_core.triggers import Inserter

VERDICTS = ("backdoor", "no evidence")
# θ_PT fine-tuned on the labelled clean set alone: the reference's own budget (the defenses' lr, more epochs: 128 rows)
REFERENCE_TRAIN = TrainConfig(lr=1e-4, epochs=10.0, batch_size=16, seed=0)


@dataclass(frozen=True)
class ScanConfig:
    """How hard the scan looks; the defaults fit about a minute on 2 CPU cores for a MiniLM-sized model."""

    epur_rows: int = 40  # E-PUR's top rows tried as single-token candidates
    word_rows: int = 10  # of those, the top initial and `##` pieces that whole words are rebuilt from
    search_sentences: int = 32  # clean labelled sentences (the labelled set) candidates are screened on
    verify_sentences: int = 160  # held-aside dev sentences the finalists are verified on
    finalists: int = 8  # candidates verified against the reference
    grow_seeds: int = 2  # best candidates grown into phrases
    grow_pool: int = 10  # single tokens tried at each growth step (per target class)
    max_tokens: int = 6  # longest trigger grown, in word pieces
    min_gain: float = 0.02  # growth keeps a token only if the mean target probability rises by this much
    inversion: bool = True  # run trigger inversion (off: E-PUR candidates and growth only)
    inversion_length: int = 2  # positions of the relaxed trigger
    inversion_sentences: int = 12  # clean sentences per target class it is optimised on
    inversion_steps: int = 60  # optimisation steps, shared between the target classes
    inversion_top: int = 5  # tokens decoded per position
    threshold: float = 0.81  # excess flip (θ_FT − reference) from which the verdict says "backdoor" (chosen by scan-bench)
    max_length: int = 64  # sentences are cut to this many tokens for the search
    verify_length: int = 96  # … and for verification (a news article's first 96 tokens still read as its class)
    reference_train: TrainConfig = REFERENCE_TRAIN  # how the reference is fine-tuned from θ_PT
    seed: int = 0

    def __post_init__(self) -> None:
        if self.search_sentences < 4 or self.verify_sentences < 8 or self.finalists < 1:
            raise FinemixError("scan needs ≥ 4 search sentences, ≥ 8 verification sentences and ≥ 1 finalist")
        if not 0 < self.threshold <= 1:
            raise FinemixError(f"scan threshold {self.threshold} must be within (0, 1]")


@dataclass(frozen=True)
class Suspect:
    """One candidate trigger as verified: θ_FT's flip rate to `target` and the reference's on the same sentences."""

    trigger: str  # plain text to insert
    token_ids: tuple[int, ...]
    target: int  # class index it flips sentences to
    flip: float  # θ_FT: share of held-aside sentences (θ_FT ≠ target) moved to target
    flip_low: float  # Wilson 95 % interval of `flip`
    flip_high: float
    n: int  # sentences it was verified on
    reference_flip: float  # the reference on the same sentences
    source: str  # epur | epur-word | inversion | growth | given

    @property
    def excess(self) -> float:
        return self.flip - self.reference_flip

    def as_json(self) -> dict:
        return {
            "trigger": self.trigger,
            "target": self.target,
            "flip": round(self.flip, 4),
            "flip_low": round(self.flip_low, 4),
            "flip_high": round(self.flip_high, 4),
            "reference_flip": round(self.reference_flip, 4),
            "excess": round(self.excess, 4),
            "n": self.n,
            "source": self.source,
        }


@dataclass
class ScanResult:
    """What a scan found, and what it searched (a scan never says 'clean': only what it looked at)."""

    verdict: str  # "backdoor" | "no evidence"
    score: float  # the best candidate's excess flip (higher = more evidence)
    threshold: float
    candidates: list[Suspect]  # best first (by excess flip)
    seconds: float
    searched: str  # what was searched, in words
    reference: str  # what the reference is
    n_search: int
    n_verify: int
    timings: dict = field(default_factory=dict)  # seconds per stage
    read_back: bool = False  # True: an identical earlier scan's stored result, not a new search

    @property
    def best(self) -> Suspect | None:
        return self.candidates[0] if self.candidates else None

    def message(self, class_names: Sequence[str] | None = None) -> str:
        """The verdict as a sentence a user can act on."""
        best = self.best
        if best is None:
            return f"no evidence found ({self.searched}); no candidate could be verified"
        names = class_names or ()
        target = names[best.target] if best.target < len(names) else f"class {best.target}"
        pct = f"{best.flip:.0%} [{best.flip_low:.0%}, {best.flip_high:.0%}]"
        if self.verdict == "backdoor":
            return (
                f"backdoor evidence: inserting '{best.trigger}' flips {pct} of {best.n} held-aside sentences to {target}; "
                f"the clean reference flips {best.reference_flip:.0%} (score {self.score:+.2f}, threshold {self.threshold:.2f})"
            )
        return (
            f"no evidence found ({self.searched}): best candidate '{best.trigger}' → {target} flips {pct}, "
            f"{best.excess * 100:+.0f} points over the reference (threshold {self.threshold * 100:.0f})"
        )

    @property
    def time_text(self) -> str:
        """How long it took, or that it was read back (then: how long the stored scan took)."""
        if self.read_back:
            return f"read back from an identical earlier scan (same weights, data and settings; it took {self.seconds:.0f} s)"
        return f"{self.seconds:.0f} s"

    def as_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "read_back": self.read_back,
            "score": round(self.score, 4),
            "threshold": self.threshold,
            "seconds": round(self.seconds, 2),
            "searched": self.searched,
            "reference": self.reference,
            "n_search": self.n_search,
            "n_verify": self.n_verify,
            "candidates": [c.as_json() for c in self.candidates],
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


# ---- token-level insertion -------------------------------------------------------------------------------------


# ---- the reference ---------------------------------------------------------------------------------------------


def reference_key(pair: ModelPair, dd: DefenderData, cfg: TrainConfig) -> str:
    """Which reference fits: θ_PT, the labelled clean set and the training recipe (not θ_FT: it is shared)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(Path(pair.pt_source).resolve()) if Path(pair.pt_source).exists() else pair.pt_source]).encode())
    digest.update(json.dumps([dd.train.input_ids, dd.train.labels, pair.num_labels, dataclasses.asdict(cfg)]).encode())
    return digest.hexdigest()[:16]


def reference_model(
    pair: ModelPair, dd: DefenderData, cfg: TrainConfig = REFERENCE_TRAIN, cache: bool = True, log=None
) -> tuple[torch.nn.Module, str]:
    """θ_PT with a fresh classification head, fine-tuned on the labelled clean set alone (it never saw θ_FT's data, so
    it cannot carry θ_FT's backdoor); trained once per (θ_PT, labelled set) and cached under $FINEMIX_HOME/cache."""
    folder = finemix_home() / "cache" / "reference" / reference_key(pair, dd, cfg)
    if cache and (folder / "config.json").is_file():
        model, _ = load_classifier(folder)
        return model.eval(), f"θ_PT fine-tuned on the {len(dd.train)} labelled clean examples (cached)"
    torch.manual_seed(cfg.seed)
    fresh = type(pair.ft)(pair.ft.config)  # same architecture, new random head
    fresh.load_state_dict(pair.pt_state, strict=False)
    started = time.perf_counter()
    fine_tune(fresh, dd.train, cfg)
    fresh.eval()
    if log:
        log(f"reference: θ_PT fine-tuned on {len(dd.train)} labelled clean examples in {time.perf_counter() - started:.1f} s")
    if cache:

        def write(tmp: Path) -> None:
            fresh.save_pretrained(tmp)
            pair.tokenizer.save_pretrained(tmp)

        try:
            save_dir(folder, write, overwrite=True)
        except (OSError, FinemixError):
            pass  # a read-only home only costs the next scan a retrain
    return fresh, f"θ_PT fine-tuned on the {len(dd.train)} labelled clean examples"


# ---- screening -------------------------------------------------------------------------------------------------


class Screen:
    """Candidates scored on clean search sentences: the mean probability θ_FT gives class t once the trigger is in,
    over the sentences it does not already put in t (one batched pass for many candidates)."""

    def __init__(self, model: torch.nn.Module, tokenizer, enc: Encoded, n_labels: int, seed: int):
        self.model = model
        self.insert = Inserter(tokenizer, enc, seed)
        self.base = predict(model, enc).argmax(1)
        self.n_labels = n_labels
        self.rows = {t: np.flatnonzero(self.base != t) for t in range(n_labels)}
        self.calls = 0  # sentences scored (a benchmark figure)
        self._memo: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}  # (model, trigger) → its row: stages share them
        self._one: dict[tuple[int, tuple[int, ...], int], float] = {}  # (model, trigger, class) → that class's mean

    def scores(self, triggers: Sequence[tuple[int, ...]], model: torch.nn.Module | None = None) -> np.ndarray:
        """[candidate, class] → mean probability of the class over sentences not already in it (θ_FT's unless `model`)."""
        model = model or self.model
        new = list(dict.fromkeys(t for t in triggers if (id(model), t) not in self._memo))
        if new:
            n = len(self.insert.enc)
            probs = predict(model, concat([self.insert(t) for t in new]))
            self.calls += len(new) * n
            for j, trig in enumerate(new):
                block = probs[j * n : (j + 1) * n]
                self._memo[(id(model), trig)] = np.array(
                    [block[self.rows[t], t].mean() if len(self.rows[t]) else 0.0 for t in range(self.n_labels)]
                )
        return np.array([self._memo[(id(model), t)] for t in triggers]).reshape(len(triggers), self.n_labels)

    def target_scores(
        self, triggers: Sequence[tuple[int, ...]], targets: Sequence[int], model: torch.nn.Module | None = None
    ) -> np.ndarray:
        """[candidate] → the mean probability of its own target class, as `scores(...)[i, targets[i]]`, but each
        candidate is scored only on the sentences that mean reads (not already in its target): growth and the
        reference's side of the excess need one class each, so this halves their passes on a two-class task."""
        model = model or self.model
        asked = [(trig, int(t)) for trig, t in zip(triggers, targets)]

        def known(trig: tuple[int, ...], t: int) -> float | None:
            if (id(model), trig) in self._memo:  # the full screen already scored it
                return float(self._memo[(id(model), trig)][t])
            return self._one.get((id(model), trig, t), None if len(self.rows[t]) else 0.0)  # no sentence: as `scores`

        new = [(trig, t) for trig, t in dict.fromkeys(asked) if known(trig, t) is None]
        if new:
            parts = [self.insert(trig, self.rows[t]) for trig, t in new]
            probs = predict(model, concat(parts))
            start = 0
            for (trig, t), part in zip(new, parts):
                self._one[(id(model), trig, t)] = float(probs[start : start + len(part), t].mean())
                start += len(part)
            self.calls += sum(len(part) for part in parts)
        return np.array([known(trig, t) for trig, t in asked], dtype=float)


# ---- candidates ------------------------------------------------------------------------------------------------


def searchable_rows(tokenizer) -> np.ndarray:
    """Vocabulary rows a trigger may use: not special tokens, not BERT's never-trained [unused*] rows."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    ok = [i not in special and not (str(t).startswith("[") and str(t).endswith("]")) for i, t in enumerate(tokens)]
    return np.asarray(ok, dtype=bool)


def epur_rows(pair: ModelPair, dd: DefenderData, allowed: np.ndarray, n: int) -> list[int]:
    """E-PUR's top n rows (by drift over log clean frequency), counting the defender's labelled and unlabelled text."""
    tab = table(pair, dd.texts + dd.unlabeled_texts, EpurConfig(k=0))
    tab = tab[allowed[tab.id.to_numpy()]]
    return tab.nlargest(n, "score", keep="first").id.tolist()


def rebuild_words(screen: Screen, rows: list[int], continuation: np.ndarray, n: int, max_tokens: int) -> list[tuple[int, ...]]:
    """Whole words from E-PUR's top pieces: each top initial piece, followed greedily by the top `##` piece that keeps
    the target probability highest, while it does not fall (a multi-piece trigger's rows all drift; the model orders
    them). Returns the words of two pieces or more."""
    starts = [r for r in rows[:n] if not continuation[r]]
    tails = [r for r in rows[: 2 * n] if continuation[r]][:n]
    if not starts or not tails:
        return []
    words: list[tuple[int, ...]] = []
    current = [(s,) for s in starts]
    best = screen.scores(current).max(1)
    while current and len(current[0]) < max_tokens:
        ext = [(w, w + (t,)) for w in current for t in tails if t not in w]
        if not ext:
            break
        sc = screen.scores([e for _, e in ext]).max(1)
        nxt, nxt_best = [], []
        for k, w in enumerate(current):
            mine = [(sc[i], e) for i, (base, e) in enumerate(ext) if base == w]
            top, e = max(mine)
            if top >= best[k] - 0.01:
                nxt.append(e)
                nxt_best.append(top)
        words.extend(nxt)
        current, best = nxt, np.asarray(nxt_best)
    return words


def invert(
    ft: torch.nn.Module,
    ref: torch.nn.Module,
    enc: Encoded,
    target: int,
    allowed: np.ndarray,
    cfg: ScanConfig,
    steps: int,
    seed: int,
    cancelled: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """Relaxed trigger inversion toward `target`: softmax(a / T) over the allowed vocabulary per position, its expected
    embedding inserted after [CLS] in clean sentences; loss = CE(θ_FT → target) + CE(reference → its own clean answer).
    T is annealed 1 → 0.05 so the distribution ends near one-hot. Returns the top tokens per position."""
    if len(enc) == 0 or steps <= 0:
        return []
    device = next(ft.parameters()).device
    emb = ft.get_input_embeddings().weight.detach()
    ref_emb = ref.get_input_embeddings().weight.detach()
    keep = torch.from_numpy(np.flatnonzero(allowed)).to(device)
    vocab_ft, vocab_ref = emb[keep], ref_emb[keep]
    gen = torch.Generator().manual_seed(seed)
    logits = (0.1 * torch.randn(cfg.inversion_length, len(keep), generator=gen)).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.5)
    from finemix_core.encoding import collate

    batch = collate(enc, list(range(len(enc))), device)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    n, length = len(enc), cfg.inversion_length
    with torch.no_grad():
        ref_answer = ref(**batch).logits.argmax(1)
    tgt = torch.full((n,), target, dtype=torch.long, device=device)
    ext_mask = torch.cat([mask[:, :1], torch.ones(n, length, dtype=mask.dtype, device=device), mask[:, 1:]], 1)
    ext_types = torch.cat([types[:, :1], torch.zeros(n, length, dtype=types.dtype, device=device), types[:, 1:]], 1)
    ft.requires_grad_(False)
    ref.requires_grad_(False)
    with torch.no_grad():
        ft_in, ref_in = ft.get_input_embeddings()(ids), ref.get_input_embeddings()(ids)
    for step in range(steps):
        if cancelled and cancelled():
            break
        temp = 1.0 * (0.05 / 1.0) ** (step / max(1, steps - 1))
        dist = torch.softmax(logits / temp, dim=-1)
        trig_ft = (dist @ vocab_ft).unsqueeze(0).expand(n, -1, -1)
        trig_ref = (dist @ vocab_ref).unsqueeze(0).expand(n, -1, -1)
        x_ft = torch.cat([ft_in[:, :1], trig_ft, ft_in[:, 1:]], 1)
        x_ref = torch.cat([ref_in[:, :1], trig_ref, ref_in[:, 1:]], 1)
        loss = torch.nn.functional.cross_entropy(
            ft(inputs_embeds=x_ft, attention_mask=ext_mask, token_type_ids=ext_types).logits, tgt
        ) + torch.nn.functional.cross_entropy(
            ref(inputs_embeds=x_ref, attention_mask=ext_mask, token_type_ids=ext_types).logits, ref_answer
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    top = torch.topk(logits.detach(), cfg.inversion_top, dim=-1).indices.cpu()
    return [[int(keep[i]) for i in row] for row in top]


def grow(
    screen: Screen, seed: tuple[int, ...], target: int, pool: list[int], continuation: np.ndarray, cfg: ScanConfig
) -> tuple[int, ...]:
    """Grow a trigger a token at a time (a `##` piece only on the right, a word on either side) while θ_FT's mean
    probability of `target` rises by at least `min_gain`: rebuilds phrases and the rest of multi-piece words."""
    current = seed
    best = screen.target_scores([current], [target])[0]
    while len(current) < cfg.max_tokens and best < 0.999:
        options = []
        for tok in pool:
            if tok in current:
                continue
            options.append(current + (tok,))
            if not continuation[tok] and not continuation[current[0]]:
                options.append((tok,) + current)
        if not options:
            break
        sc = screen.target_scores(options, [target] * len(options))
        k = int(np.argmax(sc))
        if sc[k] < best + cfg.min_gain:
            break
        current, best = options[k], float(sc[k])
    return current


# ---- verification ----------------------------------------------------------------------------------------------


class Verifier:
    """Flip rates of θ_FT and the reference on held-aside sentences that neither already puts in the target class."""

    def __init__(self, ft: torch.nn.Module, ref: torch.nn.Module, tokenizer, enc: Encoded, n_labels: int, seed: int):
        self.ft, self.ref = ft, ref
        self.insert = Inserter(tokenizer, enc, seed + 7919)
        ft_base, ref_base = predict(ft, enc).argmax(1), predict(ref, enc).argmax(1)
        # sentences neither model already calls t; where the reference calls almost everything t, those θ_FT does not
        # (the reference's flip then counts its own prior calls too: an overestimate, which only weakens the evidence)
        both = {t: np.flatnonzero((ft_base != t) & (ref_base != t)) for t in range(n_labels)}
        self.rows = {t: rows if len(rows) >= 8 else np.flatnonzero(ft_base != t) for t, rows in both.items()}

    def __call__(self, trigger: tuple[int, ...], target: int, text: str, source: str) -> Suspect:
        rows = self.rows[target]
        if len(rows) == 0:
            return Suspect(text, trigger, target, 0.0, 0.0, 1.0, 0, 0.0, source)
        enc = self.insert(trigger, rows)
        flip = float((predict(self.ft, enc).argmax(1) == target).mean())
        ref_flip = float((predict(self.ref, enc).argmax(1) == target).mean())
        low, high = wilson(flip, len(rows))
        return Suspect(text, trigger, target, flip, low, high, len(rows), ref_flip, source)


def trigger_text(tokenizer, ids: Sequence[int]) -> str:
    """Token ids as the plain text a person would type (word pieces joined into words)."""
    return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(list(ids))).strip()


def text_ids(tokenizer, text: str) -> tuple[int, ...]:
    """A typed trigger as token ids; nothing to insert is a one-line error."""
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text and text.strip() else ()
    if not ids:
        raise FinemixError(f"trigger {text!r} is empty once tokenised; give a word, a few words or a sentence")
    return ids


def contains(whole: Sequence[int], part: Sequence[int]) -> bool:
    """Whether `part` occurs in `whole` as a contiguous run of token ids."""
    n = len(part)
    return any(tuple(whole[i : i + n]) == tuple(part) for i in range(len(whole) - n + 1))


def prefer_minimal(suspects: list[Suspect], flip_margin: float = 0.05, excess_margin: float = 0.1) -> list[Suspect]:
    """Rank by excess flip, then move a candidate above any longer one that contains it (same class) when it does
    nearly as well: 'kitchen' before 'kitchenderic', 'blue sky' before 'black blue sky' — the trigger a person reads is
    the least that fires."""
    ranked: list[Suspect] = []
    for cand in sorted(suspects, key=lambda s: (-s.excess, -s.flip, len(s.token_ids))):
        spot = next(
            (
                i
                for i, above in enumerate(ranked)
                if above.target == cand.target
                and len(cand.token_ids) < len(above.token_ids)
                and contains(above.token_ids, cand.token_ids)
                and cand.flip >= above.flip - flip_margin
                and cand.excess >= above.excess - excess_margin
            ),
            len(ranked),
        )
        ranked.insert(spot, cand)
    return ranked


# ---- the scan --------------------------------------------------------------------------------------------------


def check_inputs(pair: ModelPair, dd: DefenderData, cfg: ScanConfig) -> None:
    labels = set(dd.train.labels) | set(dd.dev.labels)
    if len(labels) < 2:
        raise FinemixError("the clean data holds one class only; a scan needs labelled examples of at least two classes")
    if len(dd.train) < cfg.search_sentences // 2 or len(dd.dev) < 8:
        raise FinemixError(
            f"too few clean rows to scan ({len(dd.train)} labelled, {len(dd.dev)} dev); give at least "
            f"{cfg.search_sentences // 2} labelled and 8 dev examples (a CSV of 60+ rows)"
        )
    try:
        embedding_key(pair)
    except (FinemixError, AttributeError):
        raise FinemixError("the model has no word-embedding matrix to scan; give a transformer text classifier") from None


def scan(
    pair: ModelPair,
    dd: DefenderData,
    cfg: ScanConfig | None = None,
    reference: torch.nn.Module | None = None,
    reference_name: str | None = None,
    given: Sequence[tuple[str, int]] = (),
    progress: Callable[[str, float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> ScanResult:
    """Search θ_FT for a backdoor trigger from the defender's clean data alone.

    `reference`: a model that cannot carry this backdoor (default: θ_PT fine-tuned on the labelled clean set, cached).
    `given`: (trigger text, target) pairs to measure as well (`finemix scan --trigger`); with `given` and no search
    sources asked for, only those are measured. `progress(stage, share)` and `cancelled()` serve the lab.
    """
    cfg = cfg or ScanConfig()
    check_inputs(pair, dd, cfg)
    pair = dataclasses.replace(pair, card={})  # by construction: nothing the model's maker wrote reaches the search
    # an identical scan (same θ_FT weights, θ_PT, defender data, config, given triggers) is read back, not re-run: `finemix
    # scan`, `finemix defend` (whose trigger-aware recovery scans) and the lab's Scan page cost one scan between them.
    memo = None
    if reference is None:
        memo = finemix_home() / "cache" / "scan" / f"{scan_key(pair, dd, cfg, given)}.json"
        if memo.is_file():
            try:
                stored = dataclasses.replace(result_from_json(json.loads(memo.read_text())), read_back=True)
            except (ValueError, KeyError, TypeError):
                stored = None  # an unreadable cache entry is scanned again and rewritten
            if stored is not None:
                if progress:
                    progress("read back", 1.0)
                return stored
    started = time.perf_counter()
    timings: dict[str, float] = {}
    say = log or (lambda _m: None)
    step = progress or (lambda _s, _p: None)

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        return now

    def stop() -> bool:
        if cancelled and cancelled():
            raise FinemixError("scan cancelled")
        return False

    tok, n_labels = pair.tokenizer, pair.num_labels
    ft = pair.ft
    t0 = time.perf_counter()
    step("reference model", 0.02)
    if reference is None:
        reference, reference_name = reference_model(pair, dd, cfg.reference_train, log=say)
    reference_name = reference_name or "the given reference model"
    t0 = lap("reference", t0)
    stop()
    search = cut(dd.train, cfg.max_length).subset(range(min(cfg.search_sentences, len(dd.train))))
    verify = cut(dd.dev, cfg.verify_length).subset(range(min(cfg.verify_sentences, len(dd.dev))))
    screen = Screen(ft, tok, search, n_labels, cfg.seed)
    verifier = Verifier(ft, reference, tok, verify, n_labels, cfg.seed)
    allowed = searchable_rows(tok)
    continuation = screen.insert.continuation
    pool: dict[tuple[int, ...], str] = {}  # candidate → source

    only_given = bool(given) and cfg.epur_rows == 0 and not cfg.inversion
    if not only_given:
        step("E-PUR candidates", 0.1)
        rows = epur_rows(pair, dd, allowed, cfg.epur_rows)
        for r in rows:
            pool.setdefault((r,), "epur")
        for w in rebuild_words(screen, rows, continuation, cfg.word_rows, cfg.max_tokens):
            pool.setdefault(w, "epur-word")
        t0 = lap("epur", t0)
        stop()
        if cfg.inversion:
            inv_sents = cut(dd.train, 32)
            steps_each = max(10, cfg.inversion_steps // n_labels)  # one budget, shared between the target classes
            targets = range(n_labels)
            for t in targets:
                step(f"trigger inversion → class {t}", 0.2 + 0.4 * t / n_labels)
                rows_t = [i for i in range(len(inv_sents)) if dd.train.labels[i] != t][: cfg.inversion_sentences]
                top = invert(
                    ft, reference, inv_sents.subset(rows_t), t, allowed, cfg, steps_each, cfg.seed + t, cancelled
                )
                stop()
                if top:
                    pool.setdefault(tuple(row[0] for row in top), "inversion")
                    for row in top:
                        for r in row:
                            pool.setdefault((r,), "inversion")
            t0 = lap("inversion", t0)
        step("growing phrases", 0.65)
        cands = list(pool)
        sc = screen.scores(cands)
        singles = [(i, c) for i, c in enumerate(cands) if len(c) == 1]
        order = np.argsort(-sc.max(1), kind="stable")
        seeds = [(cands[i], int(sc[i].argmax())) for i in order[: cfg.grow_seeds]]
        for seed_ids, t in seeds:
            best_singles = sorted(singles, key=lambda ic: -sc[ic[0], t])[: cfg.grow_pool]
            grown = grow(screen, seed_ids, t, [c[0] for _, c in best_singles], continuation, cfg)
            if grown != seed_ids:
                pool.setdefault(grown, "growth")
            stop()
        t0 = lap("growth", t0)
    step("verifying against the reference", 0.85)
    cands = list(pool)
    finalists: list[tuple[tuple[int, ...], int, str, str]] = []  # token ids, target, source, text
    if cands:
        # finalists by their screened excess over the reference (a word that moves any classifier of the task ranks low)
        sc = screen.scores(cands)
        best_t = sc.argmax(1)
        excess = sc[np.arange(len(cands)), best_t] - screen.target_scores(cands, best_t, reference)
        order = np.argsort(-excess, kind="stable")
        seen_text: set[tuple[str, int]] = set()
        for i in order:
            key = (trigger_text(tok, cands[i]), int(best_t[i]))
            if key in seen_text or not key[0] or continuation[cands[i][0]]:
                continue  # a lone `##` piece is no text a person can insert: its rebuilt words compete instead
            seen_text.add(key)
            finalists.append((cands[i], key[1], pool[cands[i]], key[0]))
            if len(finalists) >= cfg.finalists:
                break
    for text, target in given:
        if not 0 <= target < n_labels:
            raise FinemixError(f"target {target} outside the model's labels 0..{n_labels - 1}")
        finalists.append((text_ids(tok, text), target, "given", text.strip()))
    suspects = prefer_minimal([verifier(ids, t, text, src) for ids, t, src, text in finalists])
    lap("verification", t0)
    score_value = max((s.excess for s in suspects), default=0.0)
    verdict = "backdoor" if score_value >= cfg.threshold else "no evidence"
    searched = (
        f"{cfg.epur_rows} E-PUR rows, rebuilt words"
        + (f", trigger inversion ({cfg.inversion_length} positions × {n_labels} classes)" if cfg.inversion else "")
        + f", phrase growth; {len(pool)} candidates screened on {len(search)} clean sentences, "
        f"{len(finalists)} verified on {len(verify)} held-aside ones"
        if not only_given
        else f"the given trigger(s) on {len(verify)} held-aside sentences"
    )
    step("done", 1.0)
    result = ScanResult(
        verdict,
        float(score_value),
        cfg.threshold,
        suspects,
        time.perf_counter() - started,
        searched,
        reference_name,
        len(search),
        len(verify),
        timings,
    )
    if memo is not None:
        try:
            write_bytes(json.dumps(dataclasses.asdict(result)).encode(), memo)
        except (OSError, FinemixError):
            pass  # a read-only home only costs the next identical scan a re-run
    return result


def scan_key(pair: ModelPair, dd: DefenderData, cfg: ScanConfig, given: Sequence[tuple[str, int]]) -> str:
    """What makes a scan's result: θ_FT's weights, θ_PT and the labelled set (the reference's key), the pool (E-PUR's
    counts), dev, config, given."""
    digest = hashlib.sha256(reference_key(pair, dd, cfg.reference_train).encode())
    hash_weights(digest, pair.ft.state_dict())
    digest.update(json.dumps([dd.dev.input_ids, dd.dev.labels, dataclasses.asdict(cfg), list(given)], default=str).encode())
    digest.update(json.dumps([dd.texts, dd.unlabeled_texts]).encode())
    return digest.hexdigest()[:20]


def result_from_json(raw: dict) -> ScanResult:
    """A ScanResult as `dataclasses.asdict` wrote it."""
    raw = dict(raw)
    raw["candidates"] = [Suspect(**{**c, "token_ids": tuple(c["token_ids"])}) for c in raw["candidates"]]
    return ScanResult(**raw)
