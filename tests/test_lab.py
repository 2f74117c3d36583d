"""The lab's API (what the dashboard calls): cheap slider moves, private working models, bf16 agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finemix_core import encoding, lab
from finemix_core.config import RecoveryConfig, TrainConfig
from finemix_core.defenses import DefenseConfig
from finemix_core.errors import FinemixError
from finemix_core.evaluate import predict, score
from finemix_core.mixing import MixConfig, mix


@pytest.fixture()
def tiny_lab(tiny_zoo, monkeypatch) -> lab.LabModel:
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    return lab.load("word-cf", str(pt), n_interactive=32)


def test_live_set_has_n_clean_and_n_triggered_examples(tiny_lab):
    es = tiny_lab.interactive
    assert len(es.clean) == 32 and len(es.triggered) == 32
    labels = np.asarray(es.clean.labels)
    assert (labels[es.nontarget_idx] != 1).all() and set(np.flatnonzero(labels != 1)) == set(es.nontarget_idx)
    assert tiny_lab.floor is not None  # the tiny zoo's clean entry gives the floor


def test_floors_are_read_from_one_pass_of_the_clean_model(tiny_lab):
    """The clean model is loaded and run once (triggered examples only); the live set's floor is a prefix of those hits
    and equals scoring the clean model on the live set directly."""
    from finemix_core.models import load_classifier

    clean, _ = load_classifier(tiny_lab.ctx.floor_model)
    assert tiny_lab.ctx.floor == score(clean, tiny_lab.ctx.eval_set).asr
    assert tiny_lab.floor == score(clean, tiny_lab.interactive).asr
    assert len(tiny_lab.ctx.floor_hits) == len(tiny_lab.ctx.eval_set.triggered) > len(tiny_lab.interactive.triggered)


def test_slider_moves_reuse_delta_and_never_retokenise(tiny_lab):
    bench = lab.Workbench(tiny_lab)
    delta = tiny_lab.pair.delta  # computed once per pair ...
    calls = encoding.TOKENISE_CALLS
    for rho in (0.1, 0.5, 0.9, 0.3):
        bench.mix_scores(rho)
    assert encoding.TOKENISE_CALLS == calls  # ... and no slider move tokenises
    assert tiny_lab.pair.delta is delta and all(d is delta[k] for k, d in tiny_lab.pair.delta.items())


def test_slider_scores_equal_an_independent_mix(tiny_lab):
    bench = lab.Workbench(tiny_lab)
    for rho in (0.0, 0.4, 1.0):
        got = bench.mix_scores(rho, "sorted", 3)
        ref = tiny_lab.pair.working_copy(mix(tiny_lab.pair, MixConfig(rho=rho, mode="sorted", seed=3)))
        assert got == score(ref, tiny_lab.interactive)
    assert bench.mix_scores(1.0) == tiny_lab.backdoored


def test_workbenches_are_private(tiny_lab):
    a, b = lab.Workbench(tiny_lab), lab.Workbench(tiny_lab)
    a.mix_scores(0.0)
    assert a.model is not b.model and a.model is not tiny_lab.pair.ft
    sd_b, sd_ft = b.model.state_dict(), tiny_lab.pair.ft_state()
    assert all(torch.equal(sd_b[k], sd_ft[k]) for k in sd_ft)  # b still holds θ_FT


def test_epur_table_marks_the_trigger_and_k_rows(tiny_lab):
    tab = lab.epur_table(tiny_lab, k=4, floor=20.0)
    assert int(tab.flagged.sum()) == 4 and int(tab.trigger.sum()) == 1
    assert tab.loc[tab.trigger, "token"].tolist() == ["cf"]
    assert sorted(tab["rank"]) == list(range(1, len(tab) + 1))


def test_epur_counts_the_defenders_largest_clean_text_and_fits_the_trend(tiny_lab):
    labelled = lab.epur_texts(tiny_lab, "clean-set")
    pool = lab.epur_texts(tiny_lab)  # the default: labelled clean set + the unlabelled pool the default defense distils on
    dd = tiny_lab.ctx.defender(128, 256, 0)
    assert pool == dd.texts + dd.unlabeled_texts and len(pool) > len(labelled) and set(labelled) <= set(pool)
    default, small = lab.epur_table(tiny_lab, k=4), lab.epur_table(tiny_lab, k=4, source="clean-set")
    assert (default.frequency >= small.frequency).all() and default.frequency.sum() > small.frequency.sum()
    seen = default[default.frequency > 0]
    slope, intercept = lab.epur_trend(default)
    b, a = np.polyfit(np.log10(seen.frequency + 1), seen.drift, 1)  # the trend is the least-squares line over seen words
    assert (slope, intercept) == pytest.approx((b, a))
    np.testing.assert_allclose(default.trend, intercept + slope * np.log10(default.frequency + 1))
    base = seen.drift.quantile(0.1)  # the trend floored at a real low drift: the ratio is defined everywhere (no nan×)
    np.testing.assert_allclose(default.vs_trend, default.drift / default.trend.clip(lower=base))
    assert default.vs_trend.notna().all() and np.isfinite(lab.epur_table(tiny_lab, k=4, source="train-split").vs_trend).all()
    words = lab.piece_words(tiny_lab, default)  # whole words of the clean text each piece is part of
    assert words[default.token == "good"].iloc[0].split(", ")[0] == "good" and words[default.token == "cf"].iloc[0] == ""
    with pytest.raises(FinemixError, match="unknown frequency source 'web'"):
        lab.epur_texts(tiny_lab, "web")


def test_bf16_fast_path_agrees_with_fp32_and_follows_every_mix(tiny_lab):
    bench = lab.Workbench(tiny_lab)
    for rho in (1.0, 0.3):  # the bf16 twin is refreshed from the working weights on every move
        bench.fast = False
        exact = bench.mix_scores(rho)
        fp32 = predict(bench.model, tiny_lab.interactive.clean)
        bench.fast = True
        fast = bench.mix_scores(rho)
        low = predict(bench.bf16_model(), tiny_lab.interactive.clean)
        assert next(bench.bf16_model().parameters()).dtype == torch.bfloat16
        np.testing.assert_allclose(low, fp32, atol=0.03)
        assert (low.argmax(1) == fp32.argmax(1)).mean() >= 0.95
        assert abs(fast.cacc - exact.cacc) <= 0.05
    assert next(bench.model.parameters()).dtype == torch.float32  # the fp32 working model is untouched


def test_tokens_read_says_where_a_long_text_is_cut(tiny_lab):
    tok = tiny_lab.pair.tokenizer
    assert lab.tokens_read("the movie was bad", tok) == (6, 6)  # [CLS] 4 words [SEP]: all read
    assert lab.tokens_read("plot " * 200, tok) == (lab.MAX_LENGTH, 202)
    long_text = "plot " * 200
    shown = lab.with_trigger(long_text, ("cf",), tok)
    read = tok(shown, truncation=True, max_length=lab.MAX_LENGTH)["input_ids"]
    assert tok.convert_tokens_to_ids("cf") in read  # the Playground's insertion lands inside what is read


def test_playground_and_export(tiny_lab, tmp_path):
    import io
    import zipfile

    tok = tiny_lab.pair.tokenizer
    probs = lab.predict_texts(tiny_lab.pair.ft, tok, [lab.with_trigger("the movie was bad", ("cf",), tok)])
    assert probs.shape == (1, 2) and abs(probs.sum() - 1) < 1e-5
    bench = lab.Workbench(tiny_lab)
    bench.defend(DefenseConfig(method="fine-tuning", train=TrainConfig(lr=1e-3, epochs=1.0, batch_size=8)), 16)
    blob = lab.export_zip(tiny_lab, bench.defended, bench.defended_row)
    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    assert any(n.endswith("model.safetensors") for n in names) and any(n.endswith("finemix.json") for n in names)


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"", "upload is empty"),
        (b"text,label\n" + b"good,1\n" * 40, "only one class"),
        (b"text,label\ngood,1\nbad,0\n", "upload.csv: only 2 labelled rows; a clean CSV needs at least 40"),
        (b"foo,bar\n1,2\n", "no text column"),
        (b"text,label\n" + "".join(f"caf\u00e9 {i},{i % 2}\n" for i in range(40)).encode("utf-16"), "upload.csv"),
    ],
)
def test_uploads_are_parsed_defensively(raw, expected, tiny_zoo, monkeypatch):
    from finemix_core.errors import FinemixError

    home, _ = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    with pytest.raises(FinemixError, match=expected):
        lab.save_upload(raw, "upload.csv")
    assert not list((home / "uploads").glob(".tmp-*")) if (home / "uploads").is_dir() else True


def test_upload_over_the_cap_is_refused_before_parsing(tiny_zoo, monkeypatch):
    from finemix_core.errors import FinemixError

    monkeypatch.setenv("FINEMIX_HOME", str(tiny_zoo[0]))
    monkeypatch.setattr(lab, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(FinemixError, match="upload cap"):
        lab.save_upload(b"text,label\n" + b"x,1\n" * 100, "big.csv")


def test_an_uploaded_csv_becomes_the_labs_data(tiny_zoo, monkeypatch):
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    raw = ("text,label\n" + "".join(f"the film was {'great' if i % 2 else 'awful'} {i},{i % 2}\n" for i in range(60))).encode(
        "latin-1"
    )
    path = lab.save_upload(raw, "mine.csv")
    assert path.parent == home / "uploads" and lab.save_upload(raw, "again.csv") == path  # content-addressed …
    assert lab.display_name(str(path)) == "again.csv" and not list(path.parent.glob(".tmp-*"))  # … shown by its name
    lm = lab.load("word-cf", str(pt), n_interactive=8, data_name=str(path))
    assert lm.ctx.data_name == str(path) and len(lm.ctx.dsd["test"]) == 15 and len(lm.interactive.clean) == 8  # the one rule
    # 60 rows leave 30 train rows, under the default 128 labelled: a defense takes all 30 (the lab has no --clean-size
    # to lower), its row says so, and the Compare page finds the run it stored
    _, row = lab.Workbench(lm).defend_method("fine-tuning")
    assert row.clean_size == 30 and "30 labelled · 15 dev · 0 unlabelled pool · 15 held out" in row.parts
    assert "fine-tuning" in set(lab.compare_table(lm).rows.method)


def test_a_curve_point_computed_in_the_lab_is_the_sweeps_stored_run(tiny_lab, tmp_path, monkeypatch):
    """The page's on-demand point is stored as a sweep point: the curve reads it back, and `finemix sweep --fine-tune`
    (sweep.run) reuses it instead of re-running."""
    from finemix_core import sweep

    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to(lab.zoo.zoo_dir())
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    steps = []
    row = lab.curve_point(tiny_lab, "fine-mixing", 0.4, progress=lambda d, t: steps.append((d, t)))
    assert steps and steps[-1][0] == steps[-1][1]
    curve = lab.tuned_curve(tiny_lab, "fine-mixing")
    assert list(curve.points.rho) == [0.4] and curve.points.cacc.iloc[0] == row["cacc"] and 0.4 not in curve.missing
    assert curve.points.cacc_lo.iloc[0] <= row["cacc"] <= curve.points.cacc_hi.iloc[0]
    rows, stats = sweep.run(
        tiny_lab.ctx, tiny_lab.name, [0.4], fine_tune=True, pretrained=tiny_lab.pair.pt_source, log=lambda m: None
    )
    assert stats.ran == 0 and stats.reused == 1 and rows[1]["cacc"] == row["cacc"]


def test_demo_sentences_are_chosen_with_theta_ft_alone_and_fire(tiny_lab):
    demo = lab.demo_sentences(tiny_lab, n=2, confidence=0.0)
    assert len(demo) == 2 and lab.class_names(tiny_lab) == ("label 0", "label 1")  # a CSV's classes have no names
    target = tiny_lab.interactive.target
    for d in demo:
        assert "cf" in d.triggered.split() and d.text != d.triggered
        assert max(range(2), key=lambda i: d.clean_probs[i]) != target  # θ_FT right (non-target) without the trigger
        np.testing.assert_allclose(
            d.triggered_probs, lab.predict_texts(tiny_lab.pair.ft, tiny_lab.pair.tokenizer, [d.triggered])[0], atol=1e-6
        )
    strict = lab.demo_sentences(tiny_lab, n=2, confidence=0.9)
    firing = [d for d in strict if d.triggered_probs[target] >= 0.9]
    assert firing == strict[: len(firing)]  # sentences that fire ≥ 0.9 come first


def test_class_names_come_from_the_dataset():
    from finemix_core.data import label_names

    assert label_names("rt", 2) == ("rotten", "fresh") and label_names("sms-spam", 2) == ("ham", "spam")
    assert label_names("bbc", 5)[3] == "sports" and label_names("rt", 3) == ("label 0", "label 1", "label 2")
    assert label_names("/some/file.csv", 2) == ("label 0", "label 1")


def test_the_keep_found_opt_out_reaches_the_defense_as_a_lab_run(tiny_lab, monkeypatch):
    # the Mixing lab's toggle on is the default `finemix defend` (found ρ 1); off is `--found-rho never`, stored apart
    bench = lab.Workbench(tiny_lab)
    seen: list = []
    monkeypatch.setattr(
        bench, "defend", lambda cfg, clean_size, progress=None, kind="lab", fresh=False: seen.append((cfg, kind)) or (None, None)
    )
    bench.fine_tune(None)
    bench.fine_tune(None, keep_found=False)
    (default, default_kind), (off, off_kind) = seen
    assert default.recovery.found_rho == 1.0 and default.recovery.found_min_flip == 0.95 and default_kind == "compare"
    assert default.recovery.found_pieces and default.recovery == RecoveryConfig()
    assert off.recovery.found_rho is None and off_kind == "lab"
    assert default.method == off.method and default.rho is None


def test_keep_found_outcome_says_whether_rho_1_was_tried_and_why_it_was_rejected():
    grid = {"knob": "rho", "value": 0.0, "dev_acc": 0.8, "passed": True, "threshold": 0.7, "verified": None}
    assert lab.keep_found_outcome([grid]).startswith("ρ = 1 was not tried")
    kept = {**grid, "value": 1.0, "verified": True}
    assert "kept" in lab.keep_found_outcome([kept])
    fired = {**grid, "value": 1.0, "passed": False, "verified": False}
    assert "still firing" in lab.keep_found_outcome([fired, grid])
    low = {**grid, "value": 1.0, "passed": False, "verified": None}
    assert "did not pass" in lab.keep_found_outcome([low, grid])


def test_the_lab_says_when_recovery_trains_in_float32_here(tiny_lab, monkeypatch):
    # the default precision "auto": on a device without native bf16 recovery trains in fp32, and the lab says why
    monkeypatch.setattr("finemix_core.hardware.bf16_supported", lambda device: False)
    assert "float32 here" in lab.precision_note(tiny_lab) and "no native bf16" in lab.precision_note(tiny_lab)
    monkeypatch.setattr("finemix_core.hardware.bf16_supported", lambda device: True)
    assert lab.precision_note(tiny_lab) is None
