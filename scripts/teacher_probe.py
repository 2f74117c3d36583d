"""Dev-only probe: could a teacher with the clean data's lean replace θ_FT? The scan's clean reference (θ_PT fine-tuned
on the 128 labelled examples alone) and its probability mixture with θ_FT, scored on the defender's dev split.

    FINEMIX_HOME=… .venv/bin/python scripts/teacher_probe.py word-cf,sentence,csv:/path/model@/path/clean.csv

Printed per case and mixture weight w (teacher = (1 − w)·θ_FT + w·reference, on probabilities): dev accuracy, the
share of dev sentences called class 1, and each class's error rate. Never reads the test split or a trigger.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from finemix_core import experiment
from finemix_core.evaluate import predict
from finemix_core.scan import reference_model

WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def main() -> None:
    torch.set_num_threads(2)
    for case in sys.argv[1].split(","):
        if case.startswith("csv:"):
            model, csv = case.removeprefix("csv:").split("@")
            ctx = experiment.prepare_defender(model, clean_data=csv)
        else:
            ctx = experiment.prepare_defender(case)
        dd = ctx.defender(128, 256, 0)
        reference, _ = reference_model(ctx.pair, dd)  # the scan's, cached
        labels = np.array(dd.dev.labels)
        p_ft = predict(ctx.pair.ft_for_inference(torch.device("cpu")), dd.dev)
        p_ref = predict(reference, dd.dev)
        cells = [f"{case.split('/')[-1][:30]:30s} dev {len(labels)} (class-1 share {labels.mean():.2f})"]
        for w in WEIGHTS:
            pred = ((1 - w) * p_ft + w * p_ref).argmax(1)
            cells.append(
                f"w {w:g}: acc {np.mean(pred == labels):.3f}, class-1 share {np.mean(pred == 1):.2f}, "
                f"0→1 {np.mean(pred[labels == 0] == 1):.2f}, 1→0 {np.mean(pred[labels == 1] == 0):.2f}"
            )
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
