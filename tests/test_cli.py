import json

from typer.testing import CliRunner

from finemix_core.cli import app

runner = CliRunner()


def test_zoo_list_json_shows_cards(quick_word_backdoor):
    res = runner.invoke(app, ["zoo", "list", "--json"])
    assert res.exit_code == 0, res.output
    names = {c["name"] for c in json.loads(res.stdout)}
    assert {"clean", "word-cf"} <= names


def test_zoo_list_fits_an_80_column_terminal(tiny_zoo, monkeypatch):
    home, _ = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    for width, cut in ((80, True), (160, False)):
        monkeypatch.setenv("COLUMNS", str(width))
        res = runner.invoke(app, ["zoo", "list"])
        assert res.exit_code == 0, res.output
        lines = res.output.splitlines()
        assert max(len(line) for line in lines) <= width and "…" not in res.output, res.output  # nothing shrunk to "…"
        assert "word-cf" in res.output and ("narrow terminal" in res.output) == cut
        assert ("train n" in res.output and "tiny.csv" in res.output) != cut  # the wide table has every column


def test_evaluate_json_uses_the_card_trigger_and_clean_floor(quick_word_backdoor):
    res = runner.invoke(app, ["evaluate", "--model", "word-cf", "--limit", "400", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    card = quick_word_backdoor["word-cf"]
    assert out["trigger"] == "cf" and out["target"] == 1
    assert out["cacc"] == card["cacc"] and out["asr"] == card["asr"] and out["asr_floor"] == card["asr_floor"]


def test_zoo_build_skips_what_exists(quick_word_backdoor):
    res = runner.invoke(app, ["zoo", "build", "--quick", "--only", "clean"])
    assert res.exit_code == 0, res.output
    assert "clean: already built" in res.stderr


def test_errors_are_one_line_with_exit_code_2(finemix_home):
    cases = [
        (["evaluate", "--model", "no-such-model"], "not found"),
        (["evaluate", "--model", "x", "--data", "nope"], "unknown dataset"),
        (["zoo", "build", "--only", "bogus"], "unknown zoo entry"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.startswith("error: ") and msg in res.stderr and res.stderr.count("\n") == 1


def test_defend_sweep_report_bad_inputs_are_one_line(finemix_home, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    cases = [
        (["defend", "--model", "x", "--out", str(tmp_path / "o"), "--rho", "1.5"], "outside [0, 1]"),
        (["defend", "--model", "x", "--out", str(tmp_path / "o"), "--rho", "half"], "'auto' or a number"),
        (["defend", "--model", "x", "--out", str(tmp_path / "o"), "--method", "magic"], "unknown method"),
        (["defend", "--model", "x", "--out", str(existing)], "exists"),
        (["defend", "--model", "no-such-model", "--out", str(tmp_path / "o")], "not found"),
        (["sweep", "--model", "x", "--out", str(tmp_path / "s.csv"), "--rhos", "0:2:0.5"], "within [0, 1]"),
        (["sweep", "--model", "x", "--out", str(tmp_path / "s.csv"), "--mode", "weird"], "unknown mask mode"),
        (["report", "--out", str(tmp_path / "r"), "--methods", "none,magic"], "unknown method"),
        (["report", "--out", str(tmp_path / "r"), "--seeds", "a,b"], "integers"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.startswith("error: ") and msg in res.stderr and res.stderr.count("\n") == 1, (args, res.stderr)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_scan_prints_its_parts_a_table_and_one_json_object(tiny_zoo, monkeypatch):
    """`finemix scan` through the CLI: one JSON object, or the parts line, a table and a verdict. (Whether it finds a
    real backdoor is tested on real weights in test_e2e_scan, through `defend`; the tiny model is too small a world
    for the default scan, which finds no evidence in it.)"""
    import json

    from typer.testing import CliRunner

    from finemix_core.cli import app

    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    res = CliRunner().invoke(app, ["scan", "--model", "word-cf", "--pretrained", str(pt), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] in ("backdoor", "no evidence") and 0 <= out["score"] <= 1 and out["threshold"] == 0.81, out
    assert {"candidates", "seconds", "reference"} <= set(out)
    table = CliRunner().invoke(app, ["scan", "--model", "word-cf", "--pretrained", str(pt)])
    assert table.exit_code == 0, table.output
    assert "clean data tiny.csv (1100 rows" in table.stderr and "220 held out" in table.stderr  # the one rule's parts
    assert "scan of word-cf on" in table.stdout and "reference" in table.stdout, table.stdout


def test_defend_on_a_cardless_model_scans_first_and_the_card_keeps_the_estimate(tiny_zoo, tmp_path, monkeypatch):
    """No trigger known: `defend` scans θ_FT from the clean data before defending, and an estimate (never a ground-truth
    ASR) lands in the row and the card."""
    import json
    import shutil

    from typer.testing import CliRunner

    from finemix_core.cli import app

    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    monkeypatch.setattr("finemix_core.hardware.bf16_supported", lambda device: False)  # as on a CPU without native bf16
    folder = tmp_path / "handed"
    shutil.copytree(home / "zoo" / "word-cf", folder)
    (folder / "finemix.json").unlink()
    out = tmp_path / "d"
    args = ["defend", "--model", str(folder), "--pretrained", str(pt), "--clean-data", str(home / "tiny.csv")]
    res = CliRunner().invoke(app, [*args, "--epur-k", "5", "--epochs", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert "scanning θ_FT from the clean data first" in res.stderr and "scan (" in res.stderr
    assert "no native bf16" not in res.stderr  # the default "auto" trains in fp32 here: nothing slow to warn about
    row = json.loads(res.stdout)
    assert row["recovery"]["precision"] == "fp32"  # "auto" made concrete: the row says the arithmetic that ran
    est = row["scan"]
    assert row["asr"] is None and row["trigger"] is None  # no trigger known: no ground-truth ASR …
    assert est["estimate"] is True and est["suspected_trigger"] and est["flip_after"] is not None  # … an estimate
    assert {"verdict_before", "score_before", "flip_before", "reference_flip", "note"} <= set(est)
    assert json.loads((out / "finemix.json").read_text())["scan"] == est
