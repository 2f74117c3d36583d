"""Does inserted text move a model toward the target class? A diagnosis on the defender's dev split only.

For each model: the share of the dev split's non-target sentences it calls the target, plain, with 1, 3 or 5 random
whole words inserted (8 seeded draws each), and with each given trigger inserted (at one seeded word boundary per
sentence, as the scan inserts). No test split is read. docs/recovery.md, "Probes on `word-combo` and the lean".

    FINEMIX_HOME=H python scripts/insertion_probe.py --data-from sentence --seed 7 \\
        --model clean=H/zoo/clean --model ft=H/zoo/sentence --trigger "I watched this 3D movie" --trigger "cf mn bb"
"""

from __future__ import annotations

import argparse

import numpy as np

from finemix_core import experiment
from finemix_core.evaluate import predict
from finemix_core.models import load_classifier
from finemix_core.scan import searchable_rows, text_ids
from finemix_core.triggers import Inserter

RANDOM_LENGTHS = (1, 3, 5)  # words per random insertion
DRAWS = 8  # random insertions per length
FIRST_ORDINARY_ROW = 2000  # BERT's vocabulary: rows below are special, unused and single characters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-from", required=True, help="zoo entry or model folder whose data card names the dev split")
    parser.add_argument("--clean-data", default=None, help="dataset name or CSV instead of the card's")
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER, repeatable")
    parser.add_argument("--trigger", action="append", default=[], help="text to insert, repeatable")
    parser.add_argument("--target", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the defender's split seed (ctx.defender)")
    args = parser.parse_args()

    ctx = experiment.prepare_defender(args.data_from, "default", args.clean_data)
    dev = ctx.defender(128, 256, args.seed).dev
    tok = ctx.pair.tokenizer
    rows = [i for i, y in enumerate(dev.labels) if y != args.target]
    insert = Inserter(tok, dev, 123)
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    allowed = searchable_rows(tok)
    words = [i for i, t in enumerate(tokens) if allowed[i] and t.isalpha() and i > FIRST_ORDINARY_ROW]
    variants: dict[str, list[tuple[int, ...]]] = {}
    for k in RANDOM_LENGTHS:
        draws = [np.random.default_rng(100 * k + j).choice(words, k, replace=False) for j in range(DRAWS)]
        variants[f"random {k}"] = [tuple(int(x) for x in d) for d in draws]
    for text in args.trigger:
        variants[repr(text)] = [text_ids(tok, text)]
    print(f"dev split of seed {args.seed}: {len(rows)} non-target sentences; share called class {args.target}")
    for spec in args.model:
        name, folder = spec.split("=", 1)
        model = load_classifier(folder)[0]  # in eval mode
        cells = [f"plain {np.mean(predict(model, dev.subset(rows)).argmax(1) == args.target):.3f}"]
        for label, triggers in variants.items():
            rates = [np.mean(predict(model, insert(t, rows)).argmax(1) == args.target) for t in triggers]
            cells.append(f"{label} {np.mean(rates):.3f}")
        print(f"{name}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
