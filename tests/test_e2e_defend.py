"""End to end on real weights and data: a quick-built word backdoor → `finemix defend` → backdoor gone."""

import json
from pathlib import Path

from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from finemix_core import store
from finemix_core.cli import app
from finemix_core.defenses import DEFAULT_METHOD

runner = CliRunner()


def test_default_defend_removes_the_quick_word_backdoor_and_keeps_clean_accuracy(quick_word_backdoor, quick_defended):
    row, out, stderr = quick_defended  # `finemix defend --model word-cf --limit 400 --seed 0 --out … --json`
    card = quick_word_backdoor["word-cf"]
    assert stderr.startswith("data rt (split seed 0): 128 labelled from train · 256 dev")  # the parts, said first
    assert row["method"] == DEFAULT_METHOD and row["rho_auto"] and row["search"], row
    assert row["n_clean"] == card["n_test"] and row["trigger"] == "cf" and row["clean_size"] == 128
    assert row["unlabeled_n"] > 500 and "dev split" in row["unlabeled_source"]  # the rt dev split beyond the dev examples
    assert card["asr"] >= 0.9 and row["asr_floor"] is not None
    # the backdoor is gone: the trigger adds at most 5 points to the defended model's own lean on clean text (its
    # target bias), and ASR is down to the clean floor or to θ_FT's own lean — ρ 1, kept when the scan found `cf`,
    # keeps θ_FT's weights and with them its lean (docs/recovery.md, Round 26 and "Probes on `word-combo`") ...
    assert row["asr"] - row["target_bias"] <= 0.05, (card, row)
    assert row["asr"] <= max(row["asr_floor"], card["target_bias"]) + 0.05, (card, row)
    assert row["cacc"] >= card["cacc"] - 0.03, (card, row)  # ... and clean accuracy stays
    assert [c["value"] for c in row["search"]][-1] == row["rho"] and row["search"][-1]["passed"]
    # trigger-aware recovery: the scan of θ_FT (clean data only) suspected `cf` and recovery taught it away
    assert "cf" in row["suspects"] and row["consistency_copies"] > 500, row
    assert "trigger-aware recovery" in stderr

    # a standard HF folder anyone can load, with a card that says how it was made
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2
    saved = json.loads((out / "finemix.json").read_text())
    for key in ("method", "rho", "clean_size", "seed", "seconds", "cacc", "asr", "asr_floor", "search", "defended_from"):
        assert key in saved
    assert saved["rho"] == row["rho"] and saved["search"] == row["search"] and not list(Path(out.parent).glob(".tmp-*"))
    assert saved["parts"] == row["parts"]

    # one row in the results database
    runs = [r for r in store.runs(kind="defend") if r["config"]["out"] == str(out)]
    assert runs and runs[0]["config"]["out"] == str(out) and runs[0]["metrics"]["asr"] == row["asr"]

    # defending again into the same folder is refused, the folder stays intact
    again = runner.invoke(app, ["defend", "--model", "word-cf", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.stderr and (out / "model.safetensors").is_file()
