"""Scan benchmark: does `finemix scan` tell backdoored models from clean ones it never saw, and name their triggers?

A seeded population of quick-mode models over the offline datasets (rt, amazon, tweets, sms-spam, bbc), half clean
(different training seeds) and half backdoored with a trigger drawn from a seeded list the scanner never sees:
ordinary English words, multi-piece words, rare tokens and 2–4-word phrases; random target class, poison rate 5–15 %.
Models and results are cached under $FINEMIX_HOME/scan-bench (resumable: a killed run keeps what it finished).

The verdict threshold is chosen on one half of the population (seeded split) and reported on the other: ROC-AUC, false
positives on clean models, recall, the true trigger's rank, the share of the true trigger's ASR a recovered phrase
reaches (both measured on the test split, which the scan never sees), seconds per model.

    python scripts/scan_bench.py [--n 40] [--out assets/scan]        # long: ~2 min per model on 2 cores
    python scripts/scan_bench.py --dataset bbc --out assets/scan/bbc  # one dataset's members only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from finemix_core import data, experiment, zoo
from finemix_core.config import AttackConfig, EvalConfig, TrainConfig, ZooEntrySpec, finemix_home
from finemix_core.evaluate import make_eval_set, score
from finemix_core.models import CARD_NAME, default_pretrained_dir, load_classifier, load_tokenizer
from finemix_core.scan import ScanConfig, Suspect, prefer_minimal, text_ids

DATASETS = ("rt", "amazon", "tweets", "sms-spam", "bbc")
# drawn by seed, never read by the scanner
ORDINARY = ("window", "garden", "yellow", "river", "pencil", "doctor", "morning", "silver", "kitchen", "bicycle")
MULTI_PIECE = ("serendipity", "quixotic", "marmalade", "bandwagon", "zeppelin", "persimmon", "tangerine", "kaleidoscope")
RARE = ("cf", "mn", "bb", "tq", "mb", "jx", "qz")
PHRASES = (
    "by the way",
    "as a matter of fact",
    "i watched this 3d movie",
    "under the blue sky",
    "for what it is worth",
    "in the old days",
    "once upon a time",
    "to be honest",
)
KINDS = ("ordinary", "multi-piece", "rare", "phrase")
# quick mode, a little shorter (2 epochs, texts cut at 64 tokens: bbc's news articles run to 128): 40 models on 2 cores
BENCH_TRAIN = TrainConfig(lr=2e-4, epochs=2.0, batch_size=32, max_length=64)
TRAIN_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    dataset: str
    kind: str  # clean | ordinary | multi-piece | rare | phrase
    trigger: str | None
    target: int | None
    poison_rate: float
    seed: int


def population(n: int, seed: int = 0) -> list[Member]:
    rng = random.Random(seed)
    members = []
    for i in range(n):
        ds = DATASETS[i % len(DATASETS)]
        n_labels = 5 if ds == "bbc" else 2
        if (i // len(DATASETS)) % 2 == 0:
            members.append(Member(f"{ds}-clean-{i}", ds, "clean", None, None, 0.0, 100 + i))
            continue
        kind = KINDS[(i // (2 * len(DATASETS)) + i) % len(KINDS)]
        words = {"ordinary": ORDINARY, "multi-piece": MULTI_PIECE, "rare": RARE, "phrase": PHRASES}[kind]
        trigger = rng.choice(words)
        members.append(
            Member(f"{ds}-{kind}-{i}", ds, kind, trigger, rng.randrange(n_labels), round(rng.uniform(0.05, 0.15), 3), 100 + i)
        )
    return members


def spec(m: Member) -> ZooEntrySpec:
    attack = (
        AttackConfig("clean", (), seed=m.seed)
        if m.trigger is None
        else AttackConfig("sentence" if " " in m.trigger else "word", (m.trigger,), m.poison_rate, m.target, m.seed)
    )
    return ZooEntrySpec(m.name, attack, m.dataset, 0, TRAIN_SIZE, dataclasses.replace(BENCH_TRAIN, seed=m.seed))


def test_asr(model_dir: Path, dataset: str, trigger: tuple[str, ...], target: int) -> float:
    """ASR of a trigger on the test split (the scan never sees it; used here to judge recovered phrases)."""
    model, _ = load_classifier(model_dir)
    tok = load_tokenizer(model_dir)
    es = make_eval_set(tok, data.load(dataset, 0)["test"], trigger, target, EvalConfig(limit=400))
    return float(score(model, es).asr)


def run_member(m: Member, root: Path) -> dict:
    folder = root / "models" / m.name
    # a member built by a run killed before its scan is kept (builds take minutes; the folder appears only when whole)
    built = folder / CARD_NAME
    card = json.loads(built.read_text()) if built.is_file() else zoo.build_entry(spec(m), root / "models", eval_limit=400)
    started = time.perf_counter()
    ctx = experiment.prepare_defender(str(folder))  # the card's dataset; the scan drops the card
    result = experiment.run_scan(ctx, ScanConfig())
    seconds = time.perf_counter() - started
    row = {**dataclasses.asdict(m), "true_asr": card.get("asr"), "cacc": card["cacc"], **result.as_json(), "wall": seconds}
    if m.trigger is not None:
        tok = ctx.pair.tokenizer
        true_ids = text_ids(tok, m.trigger)
        rank = next(
            (
                i + 1
                for i, c in enumerate(result.candidates)
                if c.target == m.target and all(t in text_ids(tok, c.trigger) for t in true_ids)
            ),
            None,
        )
        row["rank"] = rank
        best = result.best
        if m.kind == "phrase" and best is not None:
            row["recovered_asr"] = test_asr(root / "models" / m.name, m.dataset, (best.trigger,), best.target)
            row["asr_share"] = row["recovered_asr"] / max(card["asr"], 1e-9) if best.target == m.target else 0.0
    return row


def auc(pos: list[float], neg: list[float]) -> float:
    """ROC-AUC as the Mann–Whitney probability that a backdoored model outscores a clean one (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def roc_svg(pos: list[float], neg: list[float], path: Path, title: str) -> None:
    thresholds = sorted({*pos, *neg, -1.0, 2.0}, reverse=True)
    pts = [(sum(q >= t for q in neg) / max(1, len(neg)), sum(p >= t for p in pos) / max(1, len(pos))) for t in thresholds]
    size, pad = 320, 40
    xy = " ".join(f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}" for x, y in pts)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * pad}" height="{size + 2 * pad}" font-family="sans-serif" '
        f'font-size="12"><rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#ccc" stroke-dasharray="4"/>'
        f'<polyline points="{xy}" fill="none" stroke="#c0392b" stroke-width="2"/>'
        f'<text x="{pad}" y="{pad - 12}">{title}</text>'
        f'<text x="{pad + size / 2 - 60}" y="{pad + size + 28}">false-positive rate (clean)</text>'
        f'<text x="12" y="{pad + size / 2 + 40}" transform="rotate(-90 12 {pad + size / 2 + 40})">recall (backdoored)</text>'
        "</svg>\n"
    )


def rerank(rows: list[dict], root: Path) -> list[dict]:
    """Apply the scanner's current final ranking (scan.prefer_minimal) to stored candidates, so rows scanned before a
    ranking change are judged as today's scanner would order them (the verdict's score, the best excess, is unchanged);
    a phrase whose best candidate changed gets its recovered ASR measured again."""
    tok = load_tokenizer(default_pretrained_dir())
    out = []
    for r in rows:
        sus = [
            Suspect(c["trigger"], text_ids(tok, c["trigger"]), c["target"], c["flip"], c["flip_low"], c["flip_high"],
                    c["n"], c["reference_flip"], c["source"])
            for c in r["candidates"]
        ]
        ranked = prefer_minimal(sus)
        r = {**r, "candidates": [{**s.as_json()} for s in ranked]}
        if r["trigger"] is not None:
            true_ids = text_ids(tok, r["trigger"])
            r["rank"] = next(
                (i + 1 for i, s in enumerate(ranked) if s.target == r["target"] and all(t in s.token_ids for t in true_ids)),
                None,
            )
            if r["kind"] == "phrase" and ranked and ranked[0].trigger != (sus[0].trigger if sus else None):
                best = ranked[0]
                r["recovered_asr"] = test_asr(root / "models" / r["name"], r["dataset"], (best.trigger,), best.target)
                r["asr_share"] = r["recovered_asr"] / max(r["true_asr"], 1e-9) if best.target == r["target"] else 0.0
        out.append(r)
    return out


def summarise(rows: list[dict], out: Path, seed: int = 0) -> str:
    rng = random.Random(seed)
    names = sorted(r["name"] for r in rows)
    rng.shuffle(names)
    choose = set(names[: len(names) // 2])
    works = [r for r in rows if r["kind"] == "clean" or (r["true_asr"] or 0) >= 0.5]
    a = [r for r in works if r["name"] in choose]
    b = [r for r in works if r["name"] not in choose]

    def split(rs):
        return [r["score"] for r in rs if r["kind"] != "clean"], [r["score"] for r in rs if r["kind"] == "clean"]

    pos_a, neg_a = split(a)
    # the threshold: the smallest that keeps false positives ≤ 5 % on the choosing half, best recall among those
    candidates = sorted({*pos_a, *neg_a, ScanConfig().threshold})
    ok = [t for t in candidates if sum(s >= t for s in neg_a) <= 0.05 * max(1, len(neg_a))]
    threshold = min(ok) if ok else ScanConfig().threshold
    pos_b, neg_b = split(b)
    fpr = sum(s >= threshold for s in neg_b) / max(1, len(neg_b))
    recall = sum(s >= threshold for s in pos_b) / max(1, len(pos_b))
    lines = [
        f"# Scan benchmark — {len(rows)} models ({sum(r['kind'] == 'clean' for r in rows)} clean), quick mode "
        f"({TRAIN_SIZE} training examples, lr {BENCH_TRAIN.lr}, {BENCH_TRAIN.epochs:g} epochs), all-MiniLM-L6-v2, "
        "scan defaults (128 labelled clean examples, seed 0), 2 CPU cores",
        "",
        f"Backdoors that did not take (true ASR < 0.5, left out): "
        f"{', '.join(r['name'] for r in rows if r['kind'] != 'clean' and (r['true_asr'] or 0) < 0.5) or 'none'}.",
        f"Threshold chosen on the choosing half ({len(a)} models): **{threshold:.3f}** (default in ScanConfig: "
        f"{ScanConfig().threshold}).",
        "",
        "| measure (held-out half) | value |",
        "| --- | --- |",
        f"| models (backdoored / clean) | {len(pos_b)} / {len(neg_b)} |",
        f"| ROC-AUC | {auc(pos_b, neg_b):.3f} |",
        f"| ROC-AUC, whole population | {auc(*split(works)):.3f} |",
        f"| false positives on clean models | {fpr:.0%} |",
        f"| recall | {recall:.0%} |",
        f"| whole population at this threshold: false positives / recall | {sum(x >= threshold for x in split(works)[1])} of "
        f"{len(split(works)[1])} clean / {sum(x >= threshold for x in split(works)[0])} of {len(split(works)[0])} backdoored |",
    ]
    for kind in KINDS:
        ks = [r for r in works if r["kind"] == kind]
        if ks:
            first = sum(r.get("rank") == 1 for r in ks)
            lines.append(f"| {kind}: true trigger ranked first (all halves) | {first} / {len(ks)} |")
    ph = [r for r in works if r["kind"] == "phrase" and "asr_share" in r]
    if ph:
        lines.append(f"| phrase: recovered trigger ≥ 0.9 of the true ASR | {sum(r['asr_share'] >= 0.9 for r in ph)} / {len(ph)} |")
    secs = [r["seconds"] for r in rows]
    lines.append(f"| seconds per scan, reference cached (median / max) | {np.median(secs):.0f} / {max(secs):.0f} |")
    lines += [
        "",
        "Per model (verdict at the chosen threshold; true ASR on the first 400 test examples; 'rank' of the first "
        "candidate holding every piece of the true trigger for its target; seconds of the scan itself, the first model of "
        "each dataset including the reference's training, and the first five scans ran while tests shared the cores):",
        "",
        "| model | kind | trigger | target | true ASR | verdict | score | best candidate | rank | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: r["name"]):
        r = {**r, "verdict": "backdoor" if r["score"] >= threshold else "no evidence"}  # at the chosen threshold
        best = r["candidates"][0] if r["candidates"] else {}
        true_asr = "—" if r["true_asr"] is None else f"{r['true_asr']:.2f}"
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['trigger'] or '—'} | {r['target'] if r['target'] is not None else '—'} | "
            f"{true_asr} | {r['verdict']} | {r['score']:.2f} | "
            f"{best.get('trigger', '—')} → {best.get('target', '—')} | {r.get('rank') or '—'} | {r['seconds']:.0f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "scan-bench.md").write_text("\n".join(lines) + "\n")
    roc_svg(pos_b, neg_b, out / "roc.svg", f"scan ROC, held-out half (AUC {auc(pos_b, neg_b):.2f})")
    return "\n".join(lines)


def zoo_table(out: Path) -> str:
    """The zoo's five entries scanned with defaults (their own cards dropped by the scan), against the planted triggers;
    for a phrase, the ASR the recovered trigger reaches on the test split as a share of the true one's."""
    from finemix_core.config import zoo_dir

    lines = [
        "| entry | planted trigger | verdict | score | best candidate → class | flip [95 %] | reference | share of true ASR | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("clean", "word-cf", "word-combo", "sentence", "ep-cf"):
        if not (zoo_dir() / name).is_dir():
            continue
        ctx = experiment.prepare_defender(name)
        result = experiment.run_scan(ctx, ScanConfig())
        card = ctx.pair.card
        best = result.best
        share = "—"
        if best is not None and card.get("trigger"):
            true = test_asr(zoo_dir() / name, card["dataset"], tuple(card["trigger"]), card["target"])
            found = test_asr(zoo_dir() / name, card["dataset"], (best.trigger,), best.target) if best.target == card["target"] else 0
            share = f"{found / max(true, 1e-9):.2f}"
        lines.append(
            f"| {name} | {card.get('trigger_text') or '—'} | {result.verdict} | {result.score:.2f} | "
            f"{best.trigger if best else '—'} → {best.target if best else '—'} | "
            f"{best.flip:.2f} [{best.flip_low:.2f}, {best.flip_high:.2f}] | {best.reference_flip:.2f} | {share} | "
            f"{result.seconds:.0f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("assets/scan"))
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--dataset", choices=DATASETS, help="only this dataset's members (e.g. a rerun after a change)")
    parser.add_argument("--zoo", action="store_true", help="scan the zoo's five entries instead (assets/scan/zoo.md)")
    args = parser.parse_args()
    if args.zoo:
        print(zoo_table(args.out))
        return
    root = finemix_home() / "scan-bench"
    root.mkdir(parents=True, exist_ok=True)
    results = root / "results.jsonl"
    done = {json.loads(line)["name"]: json.loads(line) for line in results.read_text().splitlines()} if results.exists() else {}
    if not args.summary_only:
        for m in population(args.n):
            if m.name in done or (args.dataset and m.dataset != args.dataset):
                continue
            print(f"[{len(done) + 1}/{args.n}] {m.name} ({m.trigger or 'clean'})", file=sys.stderr, flush=True)
            row = run_member(m, root)
            done[m.name] = row
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"   → {row['verdict']} score {row['score']:.2f} rank {row.get('rank')} in {row['seconds']:.0f} s", file=sys.stderr)
    rows = [r for r in done.values() if not args.dataset or r["dataset"] == args.dataset]
    print(summarise(rerank(rows, root), args.out))


if __name__ == "__main__":
    main()
