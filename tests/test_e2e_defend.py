"""End to end on real weights and data: a quick-built word backdoor → `finemix defend` → backdoor gone."""

import json
from pathlib import Path

from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from finemix_core import store
from finemix_core.cli import app

runner = CliRunner()


def test_defend_cli_removes_the_quick_word_backdoor(quick_word_backdoor, tmp_path):
    out = tmp_path / "defended"
    # ρ is given: auto-ρ (δ = 2 dev points) keeps ρ high on this θ_PT and leaves much of the backdoor (see the report)
    res = runner.invoke(app, ["defend", "--model", "word-cf", "--method", "fine-mixing", "--rho", "0.3", "--limit", "400", "--seed", "0",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    card = quick_word_backdoor["word-cf"]
    assert row["n_clean"] == card["n_test"] and row["trigger"] == "cf" and row["clean_size"] == 128
    assert card["asr"] - row["asr"] >= 0.5, (card, row)  # the backdoor is gone ...
    assert row["cacc"] >= card["cacc"] - 0.05, (card, row)  # ... and clean accuracy stays
    assert not row["rho_auto"] and row["rho"] == 0.3

    # a standard HF folder anyone can load, with a card that says how it was made
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2
    saved = json.loads((out / "finemix.json").read_text())
    for key in ("method", "rho", "clean_size", "seed", "seconds", "cacc", "asr", "asr_floor", "search", "defended_from"):
        assert key in saved
    assert saved["rho"] == 0.3 and saved["search"] == [] and not list(Path(tmp_path).glob(".tmp-*"))

    # one row in the results database
    runs = store.runs(kind="defend")
    assert runs and runs[0]["config"]["out"] == str(out) and runs[0]["metrics"]["asr"] == row["asr"]

    # defending again into the same folder is refused, the folder stays intact
    again = runner.invoke(app, ["defend", "--model", "word-cf", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.stderr and (out / "model.safetensors").is_file()
