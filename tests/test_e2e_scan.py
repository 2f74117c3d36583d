"""End to end on real weights and data: a copy of the quick zoo's word backdoor without its card → `finemix defend`
scans it first (the same `scan` that `finemix scan` runs; its CLI output is tested on the tiny zoo in test_cli), the
scan names `cf`, and after the defense its estimate falls to the clean reference's level."""

import json
import shutil

from typer.testing import CliRunner

from finemix_core.cli import app

runner = CliRunner()


def test_scan_names_the_quick_word_backdoor_and_defend_reports_the_estimate(quick_word_backdoor, tmp_path):
    # a model handed over without its card: the defense does not know the trigger, so it scans first
    handed = tmp_path / "handed"
    shutil.copytree(quick_word_backdoor["word-cf"]["path"], handed)
    (handed / "finemix.json").unlink()
    res = runner.invoke(
        app, ["defend", "--model", str(handed), "--clean-data", "rt", "--limit", "200", "--out", str(tmp_path / "d"), "--json"]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["asr"] is None  # no trigger known: no ground-truth ASR …
    est = row["scan"]  # … but an estimate, labelled as one
    assert est["estimate"] is True and est["suspected_trigger"] == "cf" and est["suspected_target"] == 1
    assert est["verdict_before"] == "backdoor" and est["flip_before"] >= 0.9 and est["reference_flip"] <= 0.2, est
    assert est["flip_after"] <= est["reference_flip"] + 0.10, est
    card = json.loads((tmp_path / "d" / "finemix.json").read_text())
    assert card["scan"] == est
