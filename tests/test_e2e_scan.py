"""End to end on real weights and data: `finemix scan` names the quick zoo's word backdoor `cf` from clean data alone,
and the default defense (the run shared with test_e2e_defend), whose trigger-aware recovery scanned θ_FT the same way,
leaves that trigger flipping no more sentences than on the clean reference. `defend`'s scan-first path for a card-less model is tested on the tiny zoo
(test_cli), where it costs seconds rather than a second real defense."""

import json

from typer.testing import CliRunner

from finemix_core.cli import app

runner = CliRunner()


def test_scan_names_the_quick_word_backdoor_and_the_defended_model_no_longer_flips(quick_word_backdoor, quick_defended):
    res = runner.invoke(app, ["scan", "--model", "word-cf", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] == "backdoor", out
    best = out["candidates"][0]
    assert best["trigger"] == "cf" and best["target"] == 1 and best["flip"] >= 0.9 and best["reference_flip"] <= 0.2, out

    # the default defense scanned θ_FT the same way (one scan: the CLI read this one back) and measured the suspect on
    # the defended model: at the clean reference's level after the defense
    row, defended, _ = quick_defended
    estimate = row["scan"]
    assert estimate["estimate"] and estimate["suspected_trigger"] == "cf" and estimate["suspected_target"] == 1, estimate
    assert estimate["flip_before"] >= 0.9 and estimate["flip_after"] <= estimate["reference_flip"] + 0.10, estimate
    assert json.loads((defended / "finemix.json").read_text())["scan"] == estimate
