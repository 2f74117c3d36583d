"""AppTest for every page of the lab, on a tiny BERT pair with a real (tiny) trained word backdoor."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from finemix_core.defenses import RECOVERY_GRID

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
TIMEOUT = 120


@pytest.fixture()
def app(tiny_zoo, monkeypatch) -> AppTest:
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["model"] = "word-cf"
    at.query_params["pt"] = str(pt)
    return at


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, (label, [m.label for m in at.metric])
    return found[0]


def open_page(at: AppTest, page: str) -> AppTest:
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def test_models_page_lists_the_zoo_and_its_cards(app):
    open_page(app, "models")
    frame = app.dataframe[0].value
    assert set(frame["name"]) == {"clean", "word-cf"}
    assert app.selectbox(key="models_pick").value == "word-cf"
    assert any("Build" in b.label for b in app.button)


def test_mixing_slider_changes_the_live_metrics_and_the_url(app, tiny_zoo):
    from finemix_core import lab

    open_page(app, "mixing")
    assert app.get("plotly_chart"), "the sweep chart is drawn"
    app.slider(key="w_rho").set_value(1.0).run()
    at_one = metric(app, "ASR · mix"), metric(app, "CACC · mix")
    app.slider(key="w_rho").set_value(0.0).run()
    at_zero = metric(app, "ASR · mix"), metric(app, "CACC · mix")
    assert app.query_params["rho"] == "0.0"
    # the shown numbers are the library's numbers, and ρ moves them
    lm = lab.load("word-cf", str(tiny_zoo[1]))
    bench = lab.Workbench(lm)
    one, zero = bench.mix_scores(1.0), bench.mix_scores(0.0)
    assert at_one[0] == lab.metric_text(one, "asr") == lab.metric_text(lm.backdoored, "asr")
    assert at_zero == (lab.metric_text(zero, "asr"), lab.metric_text(zero, "cacc"))
    lo, hi = lab.wilson(zero.cacc, zero.n_clean)
    assert at_zero[1] == f"{zero.cacc:.3f} [{lo:.2f}, {hi:.2f}]" and lo < zero.cacc < hi and hi - lo > 0.05  # its 95 % interval
    assert at_one[1] != at_zero[1]


def test_query_params_restore_the_view(app):
    app.query_params.update({"rho": "0.7", "mode": "sorted", "k": "5", "seed": "3"})
    open_page(app, "mixing")
    assert app.slider(key="w_rho").value == 0.7 and app.radio(key="w_mode").value == "sorted"
    assert app.number_input(key="w_seed").value == 3
    assert "ρ = 0.7 (sorted mask, seed 3)" in " ".join(m.value for m in app.markdown)
    app.switch_page("views/epur.py").run()
    assert app.number_input(key="w_k").value == 5


def test_bad_query_params_are_ignored_with_a_warning(app):
    app.query_params.update({"rho": "7", "mode": "zigzag"})
    app.run()
    assert any("rho" in w.value and "mode" in w.value for w in app.sidebar.warning)
    app.switch_page("views/mixing.py").run()
    assert app.slider(key="w_rho").value == 0.3 and app.radio(key="w_mode").value == "random"


def test_fine_tune_the_mix_then_export_it(app):
    open_page(app, "mixing")
    next(b for b in app.button if b.label.startswith("Fine-tune the mix")).click().run()
    assert not app.exception, app.exception
    assert metric(app, "CACC · fine-tuned")
    assert not any(c.value.startswith("Read back") for c in app.caption)
    # the same fine-tune again is read back and says so; "Run it again" makes a new run, which no longer says so
    app.run()  # (AppTest keeps a clicked button's True until a plain rerun; a user's second click is a new trigger)
    next(b for b in app.button if b.label.startswith("Fine-tune the mix")).click().run()
    assert any(c.value.startswith("Read back from an identical earlier defense") for c in app.caption)
    next(b for b in app.button if b.label == "Run it again").click().run()
    assert not app.exception, app.exception
    assert not any(c.value.startswith("Read back") for c in app.caption) and metric(app, "CACC · fine-tuned")
    app.switch_page("views/export.py").run()
    next(b for b in app.button if b.label == "Prepare the zip").click().run()
    assert not app.exception, app.exception
    labels = [el.proto.label for el in app.get("download_button")]
    assert "Download model (.zip)" in labels and "Download report (JSON)" in labels


def test_auto_rho_uses_the_chosen_tolerance(app):
    open_page(app, "mixing")
    app.toggle(key="keep_found").set_value(False).run()  # the low-ρ search alone (`--found-rho never`)
    app.number_input(key="auto_tolerance").set_value(50.0).run()  # the box allows up to 50 points: ρ 0 passes, found first
    next(b for b in app.button if b.label == "Find auto-ρ").click().run()
    assert not app.exception, app.exception
    lowest = min(RECOVERY_GRID)
    assert f"auto-ρ chose ρ = {lowest:g} with a tolerance of 50 dev points" in " ".join(c.value for c in app.caption)
    search = app.dataframe[0].value  # every candidate the default recipe's search tried, with its dev accuracy
    assert list(search["ρ"]) == [lowest] and search["within tolerance"].all() and search["dev accuracy"].between(0, 1).all()


def test_auto_rho_keeping_theta_ft_by_default_says_what_it_did(app):
    open_page(app, "mixing")
    assert app.toggle(key="keep_found").value  # on by default: the default defense (Round 19)
    app.number_input(key="auto_tolerance").set_value(50.0).run()
    next(b for b in app.button if b.label == "Find auto-ρ").click().run()
    assert not app.exception, app.exception
    said = " ".join(c.value for c in app.caption)
    assert "Keeping θ_FT: ρ = 1 was" in said
    tried = 1.0 in list(app.dataframe[0].value["ρ"])  # the recovery grid stops at 0.2: a ρ 1 is the found-ρ try
    assert ("ρ = 1 was not tried" in said) is not tried


def test_epur_page_flags_k_rows_and_purifies(app):
    app.query_params["k"] = "5"
    open_page(app, "epur")
    assert app.get("plotly_chart")
    flagged = app.dataframe[0].value
    assert len(flagged) == 5 and flagged["score"].is_monotonic_decreasing
    app.toggle[0].set_value(True).run()
    assert metric(app, "CACC after E-PUR") and metric(app, "ASR after E-PUR")


def test_compare_page_runs_missing_defenses_and_tables_them(app):
    app.query_params["k"] = "5"
    open_page(app, "compare")
    app.multiselect[0].set_value(["none", "fine-tuning"]).run()
    next(b for b in app.button if b.label == "Run missing defenses").click().run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert {"none", "fine-tuning"} <= set(table["method"])
    assert app.get("plotly_chart")


def _stored_row(method: str, **fields) -> dict:
    """A run row as the store holds it (no training: the Compare page only reads rows)."""
    from finemix_core.defenses import DefenseConfig

    return {
        "model": "word-cf",
        "attack": "word",
        "method": method,
        "seed": 0,
        "clean_size": 128,
        "dev_size": 80,
        "rho": None,
        "rho_auto": False,
        "delta": 0.02,
        "prune_ratio": None,
        "epur_k": None,
        "flagged_top": [],
        "dev_acc": 0.6,
        "ft_dev_acc": 0.62,
        "search": [],
        "cacc": 0.7,
        "asr": 0.4,
        "target_bias": 0.1,
        "n_clean": 80,
        "n_nontarget": 40,
        "asr_floor": 0.05,
        "data": "tiny.csv",
        "split_seed": 0,
        "trigger": "cf",
        "train": dict(DefenseConfig().train.__dict__),
        "seconds": 1.0,
        "device": "cpu",
        **fields,
    }


def test_compare_keeps_hand_set_lab_runs_apart_and_says_when_a_search_fell_back(tiny_zoo, tmp_path, monkeypatch):
    from finemix_core import experiment

    home, pt = tiny_zoo
    fresh = tmp_path / "home"
    fresh.mkdir()
    (fresh / "zoo").symlink_to(home / "zoo")
    monkeypatch.setenv("FINEMIX_HOME", str(fresh))
    # a hand-set Mixing-lab fine-tune at ρ 0 (what used to be filed as the "fine-mixing" row) and a fixed-budget
    # fine-pruning run whose dev-only search found no ratio within tolerance (so it fell back to 0)
    experiment.record("lab", _stored_row("fine-mixing", rho=0.0, cacc=0.99, asr=0.0))
    experiment.record(
        "compare",
        _stored_row(
            "fine-pruning",
            prune_ratio=0.0,
            search=[{"knob": "prune_ratio", "value": 0.1, "dev_acc": 0.5, "passed": False, "threshold": 0.6}],
        ),
    )
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"model": "word-cf", "pt": str(pt)})
    open_page(at, "compare")
    table = at.dataframe[0].value
    assert list(table["method"]) == ["fine-pruning"]  # the manual run is not a method's row
    assert table["prune ratio"].iloc[0] == 0.0 and "fell back" in table["dev search"].iloc[0]
    assert "fine-mixing" in at.multiselect[0].options  # so the fixed-budget Fine-mixing is still offered to run
    manual = at.dataframe[1].value
    assert list(manual["method"]) == ["fine-mixing"] and list(manual["rho"]) == [0.0]
    assert any("Hand-set runs" in e.label for e in at.expander)
    assert any("differs slightly from the Mixing lab" in c.value for c in at.caption)


def test_fine_tuned_curve_page_draws_stored_points_with_intervals_and_the_auto_pick(tiny_zoo, tmp_path, monkeypatch):
    from finemix_core import experiment
    from finemix_core.defenses import DEFAULT_METHOD

    home, pt = tiny_zoo
    fresh = tmp_path / "home"
    fresh.mkdir()
    (fresh / "zoo").symlink_to(home / "zoo")
    monkeypatch.setenv("FINEMIX_HOME", str(fresh))
    stored = {
        0.0: (0.62, 0.10),
        0.4: (0.70, 0.35),
        1.0: (0.75, 0.95),
    }  # ρ → (CACC, ASR), as `finemix sweep --fine-tune` stores them
    for rho, (cacc, asr) in stored.items():
        experiment.record("sweep", _stored_row(DEFAULT_METHOD, rho=rho, cacc=cacc, asr=asr))
    experiment.record("sweep", _stored_row("epur+fine-mixing", rho=0.2, cacc=0.1, asr=0.1))  # the paper recipe: not on this curve
    experiment.record(
        "report",
        _stored_row(
            DEFAULT_METHOD,
            rho=0.0,
            rho_auto=True,
            search=[{"knob": "rho", "value": 0.0, "dev_acc": 0.61, "passed": True, "threshold": 0.58}],
        ),
    )
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"model": "word-cf", "pt": str(pt)})
    open_page(at, "curve")
    assert len(at.get("plotly_chart")) == 2  # the curve and its Pareto view
    table = at.dataframe[0].value
    assert list(table["ρ"]) == [0.0, 0.4, 1.0]
    assert list(table["CACC [95 %]"]) == [lab_rate(c, 80) for c, _ in stored.values()]
    assert list(table["ASR [95 %]"]) == [lab_rate(a, 40) for _, a in stored.values()]
    assert any("Auto-ρ picked ρ = 0" in m.value and "rho 0 → dev 0.610 ✓" in m.value for m in at.markdown)
    assert any("ρ = 0.2, 0.6, 0.8" in c.value for c in at.caption)  # the grid points still missing
    assert any(b.label == "Compute the 3 missing points" for b in at.button)
    at.radio(key="curve_recipe").set_value("paper").run()  # the paper recipe's curve: only its own points
    assert list(at.dataframe[0].value["ρ"]) == [0.2] and not any("Auto-ρ picked" in m.value for m in at.markdown)


def lab_rate(value: float, n: int) -> str:
    from finemix_core import lab

    return lab.rate_text(value, n)


def test_start_here_is_the_landing_page_and_walks_the_three_steps(app):
    from finemix_core import lab

    app.run()  # the default page
    assert not app.exception, app.exception
    assert app.title[0].value == "Start here"
    assert app.get("image"), "the method picture is drawn inline"
    next(b for b in app.button if b.label == "Show the backdoor").click().run()
    demo = app.dataframe[0].value
    assert len(demo) >= 1 and all("cf" in s for s in demo["sentence (trigger inserted)"])
    assert all(v.startswith("label 0") for v in demo["θ_FT without the trigger"])  # the tiny CSV has no class names
    next(b for b in app.button if b.label.startswith("Mix at ρ = 0.5, 0.2")).click().run()
    lesson = app.dataframe[1].value
    assert list(lesson["ρ"]) == [0.5, 0.2, 0.1, 0.0, 1.0] and lesson["ASR"].between(0, 1).all()
    said = " ".join(m.value for m in app.markdown)
    assert "The mix alone weakens the backdoor here" in said or "The mix alone does not remove this backdoor" in said
    next(b for b in app.button if b.label.startswith("Defend:")).click().run()
    assert not app.exception, app.exception
    after = app.dataframe[2].value
    assert list(after["sentence (trigger inserted)"]) == list(demo["sentence (trigger inserted)"])
    assert any(m.value.startswith("**The trigger fires on") for m in app.markdown)
    assert metric(app, "ASR · defended").split(" [")[0] != ""
    # the same defense again (as after a `finemix defend` of this model) is read back at once, and says so, and is
    # no second row in the history (Compare and History would count it twice)
    stored = len(lab.store.runs(model="word-cf"))
    next(b for b in app.button if b.label.startswith("Defend:")).click().run()
    assert any(c.value.startswith("Read back from an identical earlier defense") for c in app.caption)
    assert len(lab.store.runs(model="word-cf")) == stored
    assert any(b.label == "Run it again" for b in app.button)  # what it runs (Remember.STORE): tests/test_remembered.py
    # the one-click defense is the default method as registered (auto-ρ, shared budget): Compare and the curve find it
    run = lab.store.runs(model="word-cf")[0]
    assert run["kind"] == "compare" and run["method"] == lab.DEFAULT_METHOD and run["config"]["rho_auto"]
    app.switch_page("views/compare.py").run()
    assert not app.exception, app.exception
    assert lab.DEFAULT_METHOD not in " ".join(c.value for c in app.caption if c.value.startswith("No stored run yet"))


def test_export_offers_no_download_before_any_run(tiny_zoo, tmp_path, monkeypatch):
    home, pt = tiny_zoo
    fresh = tmp_path / "home"
    fresh.mkdir()
    (fresh / "zoo").symlink_to(home / "zoo")
    monkeypatch.setenv("FINEMIX_HOME", str(fresh))  # an empty results database
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"model": "word-cf", "pt": str(pt)})
    open_page(at, "export")
    buttons = at.get("download_button")
    assert len(buttons) == 2 and all(b.proto.disabled for b in buttons)  # enabled before any run, they downloaded nothing
    assert any("no run stored for this model yet" in c.value.lower() for c in at.caption)


def test_playground_in_a_fresh_session_prints_no_stray_code_or_values(app):
    open_page(app, "playground")  # before any fine-tune: the mix-only model is made on the spot
    shown = [str(getattr(el, "value", "")) for el in (*app.markdown, *app.get("code"), *app.get("json"), *app.get("table"))]
    assert not any("mix_scores" in v or v.strip() == "None" for v in shown), shown
    assert not app.get("code") and not app.get("table") and not app.get("json")  # Streamlit magic printed these before
    app.switch_page("views/mixing.py").run()
    app.switch_page("views/playground.py").run()  # after the Mixing lab: no stray "None" box either
    assert not any(str(getattr(el, "value", "")).strip() == "None" for el in (*app.markdown, *app.get("code"), *app.get("json")))


def test_playground_shows_both_predictions(app):
    open_page(app, "playground")
    assert any("cf" in m.value for m in app.markdown if m.value.startswith("Input:"))
    labels = [m.label for m in app.metric]
    assert "backdoored θ_FT" in labels and len(labels) == 2
    app.checkbox[0].set_value(False).run()
    app.text_area[0].set_value("a great movie").run()
    assert "Input: `a great movie`" in [m.value for m in app.markdown]


def _checksum(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(sd[k].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_sessions_are_isolated_and_the_cached_pair_is_never_mutated(app, tiny_zoo, monkeypatch):
    import state  # the dashboard module, importable once the app ran

    _home, pt = tiny_zoo
    open_page(app, "mixing")
    lm = state.lab_model("word-cf", str(pt))
    before = (_checksum(lm.pair.ft_state()), _checksum(lm.pair.pt_state))
    other = AppTest.from_file(APP, default_timeout=TIMEOUT)
    other.query_params.update({"model": "word-cf", "pt": str(pt)})
    open_page(other, "mixing")
    for rho in (0.1, 0.55, 0.9):
        app.slider(key="w_rho").set_value(rho).run()
    other.slider(key="w_rho").set_value(0.2).run()
    assert app.session_state["rho"] == 0.9 and other.session_state["rho"] == 0.2
    assert app.session_state["_bench"] is not other.session_state["_bench"]
    assert app.session_state["_bench"].model is not other.session_state["_bench"].model
    next(b for b in app.button if b.label.startswith("Fine-tune the mix")).click().run()  # a fine-tune in one session …
    assert app.session_state["_bench"].defended is not None and other.session_state["_bench"].defended is None  # … stays there
    assert (_checksum(lm.pair.ft_state()), _checksum(lm.pair.pt_state)) == before


def test_empty_zoo_offers_a_build_and_pages_point_there(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEMIX_HOME", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.title[0].value == "Start here" and any(
        "No model chosen" in i.value for i in at.info
    )  # the landing points to Models
    at.switch_page("views/models.py").run()
    assert any("zoo is empty" in i.value for i in at.info)
    assert at.multiselect[0].value == ["clean", "word-cf"]
    at.switch_page("views/mixing.py").run()
    assert any("No model chosen" in i.value for i in at.info)


def test_uploaded_clean_data_in_the_url_is_used_by_every_page(app, tiny_zoo):
    from finemix_core import lab

    raw = ("text,label\n" + "".join(f"the film was {'great' if i % 2 else 'awful'} {i},{i % 2}\n" for i in range(60))).encode()
    path = lab.save_upload(raw, "mine.csv")
    app.query_params["data"] = str(path)
    open_page(app, "mixing")
    caption = " ".join(c.value for c in app.caption)
    assert "clean data mine.csv (60 rows" in caption  # the one rule's parts, said in the caption, under the user's name
    assert "15 clean" in caption and "15 held out" in caption  # the held-out part (a quarter of 60) is the live set
    app.switch_page("views/models.py").run()
    assert any("Using: `mine.csv`" in m.value for m in app.markdown)  # not the content hash it is stored under


def test_a_local_folder_can_be_chosen_and_a_bad_one_is_refused(app, tiny_zoo, tmp_path):
    home, pt = tiny_zoo
    open_page(app, "models")
    app.text_input[0].set_value(str(tmp_path)).run()  # an empty folder: no config.json
    app.text_input[1].set_value(str(pt)).run()
    next(b for b in app.button if b.label == "Use this folder").click().run()
    assert any("no config.json" in e.value for e in app.error)
    app.text_input[0].set_value(str(home / "zoo" / "word-cf")).run()
    next(b for b in app.button if b.label == "Use this folder").click().run()
    assert not app.error and app.session_state["model"] == str(home / "zoo" / "word-cf")
    assert any(str(home / "zoo" / "word-cf") in m.value for m in app.sidebar.markdown)  # the sidebar names it at once
    app.switch_page("views/compare.py").run()
    assert not app.exception and any("word-cf" in c.value for c in app.caption)


def test_views_reach_finemix_core_only_through_lab():
    import ast

    dashboard = Path(__file__).resolve().parent.parent / "dashboard"
    for view in sorted([*dashboard.glob("views/*.py"), *dashboard.glob("*.py")]):  # the views, state, charts and app
        for node in ast.walk(ast.parse(view.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finemix_core"):
                names = {a.name for a in node.names}
                assert node.module in ("finemix_core.lab", "finemix_core.errors") or (
                    node.module == "finemix_core" and names == {"lab"}
                ), f"{view.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("finemix_core.") for a in node.names), f"{view.name} imports around lab"


def test_the_mixing_page_says_when_recovery_trains_in_float32_here(app, monkeypatch):
    # the default precision "auto" on a device without native bf16: the page says recovery runs in fp32, and why
    monkeypatch.setattr("finemix_core.hardware.bf16_supported", lambda device: False)
    open_page(app, "mixing")
    assert any("float32 here" in c.value and "no native bf16" in c.value for c in app.caption)
