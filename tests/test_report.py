"""The report on the tiny zoo: every entry × method × seed, mean ± std, verdicts, files; an interrupted
report resumes from the results database instead of re-running."""

from __future__ import annotations


import pandas as pd
import pytest

from finemix_core import executor, report
from finemix_core.config import RecoveryConfig, TrainConfig
from finemix_core.defenses import DEFAULT_METHOD, DefenseConfig
from finemix_core.epur import EpurConfig


# a one-epoch budget, a two-value ρ grid and K = 5 so the tiny report takes seconds; recovery without the scan and the
# general-text top-up (a 1,000-text pool would be most of the time): the real default is tested by the e2e test
CHEAP = DefenseConfig(
    train=TrainConfig(lr=1e-3, epochs=1.0, batch_size=16),
    rho_grid=(0.3, 0.7),
    epur=EpurConfig(k=5),
    recovery=RecoveryConfig(consistency=False, min_pool=0),
)


@pytest.fixture()
def cheap(monkeypatch):
    """Counts the defense runs actually made (not reused) by the in-process executor."""
    calls = []
    real = executor.run_defense

    def counted(ctx, cfg: DefenseConfig, clean_size, *args, **kwargs):
        calls.append((cfg.method, cfg.seed, clean_size))
        return real(ctx, cfg, clean_size, *args, **kwargs)

    monkeypatch.setattr(executor, "run_defense", counted)
    return calls


def test_report_tables_verdicts_files_and_resume(tiny_zoo, monkeypatch, tmp_path, cheap):
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    cfg = report.ReportConfig(
        methods=("none", "fine-tuning", DEFAULT_METHOD),
        seeds=(0, 1),
        clean_size=32,
        sizes=(16, 32),
        size_entries=("word-cf",),
        fixed_rhos=(0.0, 1.0),
        loose_delta=1.0,
        pretrained=str(pt),
        defense=CHEAP,
    )
    out = report.write(tmp_path / "rep", cfg, "finemix report (test)")
    main = pd.read_csv(out / "runs.csv")
    assert len(main) == 3 * 2 and set(main.method) == {"none", "fine-tuning", DEFAULT_METHOD} and set(main.seed) == {0, 1}
    assert len(pd.read_csv(out / "sizes.csv")) == 2 * 2
    fixed = pd.read_csv(out / "fixed_rho.csv")
    assert list(fixed.rho) == [0.0, 1.0] and set(fixed.method) == {DEFAULT_METHOD} and not fixed.rho_auto.any()
    text = (out / "report.md").read_text()
    assert "finemix report (test)" in text and "seeds 0, 1" in text and "word-cf" in text and "± " in text
    assert "## Against the targets" in text and ("MET" in text or "MISSED" in text)
    assert "## ρ sensitivity (fixed ρ, seed 0" in text and "never used for the verdicts" in text
    loose = pd.read_csv(out / "loose_delta.csv")  # δ = 100 points: every candidate passes, so auto-ρ takes the smallest grid ρ
    assert list(loose.seed) == [0, 1] and set(loose.rho) == {0.3} and set(loose.delta) == {1.0}  # the grid is (0.3, 0.7) here
    assert "## Auto-ρ with a looser tolerance (δ = 100 dev points" in text
    assert "The 12 runs took" in text and "reused 0 stored runs" in text
    assert len(cheap) == 6 + 4 - 2 + 2 + 2  # the size study's n=32 runs at seed 0 are the main table's: reused
    cheap.clear()
    again = report.write(tmp_path / "again", cfg, "again")  # everything is stored: nothing re-runs
    assert (
        cheap == []
        and "The 12 runs took" in (again / "report.md").read_text()
        and "reused 12 stored runs" in (again / "report.md").read_text()
    )
    report.write(tmp_path / "fresh", report.ReportConfig(**{**cfg.__dict__, "resume": False}), "fresh")
    assert len(cheap) == 12  # fresh: re-runs everything once (the n=32 size runs are still shared within the run)


def test_summary_is_mean_and_population_std():
    rows = pd.DataFrame(
        {
            "model": ["m"] * 3,
            "method": ["x"] * 3,
            "attack": ["word"] * 3,
            "trigger": ["cf"] * 3,
            "cacc": [0.8, 0.9, 1.0],
            "asr": [0.1, 0.2, 0.3],
            "target_bias": [0.2] * 3,
            "asr_floor": [0.15] * 3,
            "rho": [0.3, 0.3, 0.5],
            "seed": [0, 1, 2],
            "clean_size": [128] * 3,
        }
    )
    s = report.summarise(rows).iloc[0]
    assert s["CACC"] == "0.900 ± 0.082" and s["ASR"] == "0.200 ± 0.082" and s["ρ chosen"] == "0.3, 0.5" and s["seeds"] == "0,1,2"


def test_checkpoint_then_import_resumes_on_a_fresh_database(tiny_zoo, monkeypatch, tmp_path, cheap):
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    ckpt = tmp_path / "so-far.csv"
    cfg = report.ReportConfig(
        methods=("none", "fine-tuning"),
        seeds=(0,),
        clean_size=32,
        sizes=(),
        fixed_rhos=(),
        loose_delta=None,
        pretrained=str(pt),
        checkpoint=ckpt,
        defense=CHEAP,
    )
    first = report.write(tmp_path / "one", cfg, "one")
    saved = pd.read_csv(ckpt)
    assert len(saved) == 2 and set(saved.method) == {"none", "fine-tuning"}
    # a new machine: an empty results database, the committed checkpoint imported — nothing re-runs, numbers identical
    monkeypatch.setenv("FINEMIX_HOME", str(tmp_path / "fresh-home"))
    (tmp_path / "fresh-home").mkdir()
    (tmp_path / "fresh-home" / "zoo").symlink_to(home / "zoo")
    assert report.import_runs(ckpt) == 2 and report.import_runs(ckpt) == 0  # importing twice adds nothing
    cheap.clear()
    again = report.write(tmp_path / "two", cfg, "two")
    assert cheap == []
    a, b = pd.read_csv(first / "runs.csv"), pd.read_csv(again / "runs.csv")
    assert list(a.cacc) == list(b.cacc) and list(a.asr) == list(b.asr)
    assert "2 of them imported from" in (again / "report.md").read_text()


def test_a_row_stored_before_delta_was_recorded_keys_as_the_default_delta():
    """An old runs.csv has an empty δ cell (read back as None): its runs are the default δ's, reused on import."""
    from finemix_core.defenses import DefenseConfig
    from finemix_core.executor import run_key

    row = {"model": "word-cf", "method": "fine-pruning", "seed": 1, "train": {"lr": 1e-4}, "rho_auto": True}
    default = run_key({**row, "delta": DefenseConfig.delta})
    assert run_key(row) == default and run_key({**row, "delta": None}) == default
    assert run_key({**row, "delta": 0.05}) != default


def test_a_recovery_stored_before_its_label_weight_existed_keys_as_weight_one():
    """A +distill row stored before RecoveryConfig had `label_weight` ran with the labelled loss at weight 1."""
    import dataclasses

    from finemix_core.config import RecoveryConfig
    from finemix_core.executor import run_key

    now = dataclasses.asdict(RecoveryConfig())
    old = {k: v for k, v in now.items() if k != "label_weight"}
    row = {"model": "word-cf", "method": "epur+fine-mixing+distill", "seed": 0, "train": {"lr": 1e-4}, "rho_auto": True}
    assert run_key({**row, "recovery": old}) == run_key({**row, "recovery": now})
    assert run_key({**row, "recovery": {**old, "label_weight": 0.0}}) != run_key({**row, "recovery": now})


def test_a_recovery_stored_before_two_passes_existed_keys_as_one_pass():
    """Every step was one padded pass before `two_pass_below`: such a row is the same experiment as two_pass_below 0,
    not as today's default (which may split a step where the texts differ in length)."""
    import dataclasses

    from finemix_core.config import RecoveryConfig
    from finemix_core.executor import run_key

    now = dataclasses.asdict(RecoveryConfig())
    old = {k: v for k, v in now.items() if k != "two_pass_below"}
    row = {"model": "word-cf", "method": "epur+fine-mixing+distill", "seed": 0, "train": {"lr": 1e-4}, "rho_auto": True}
    assert run_key({**row, "recovery": old}) == run_key({**row, "recovery": {**now, "two_pass_below": 0.0}})
    assert run_key({**row, "recovery": old}) != run_key({**row, "recovery": now})


def test_the_found_settings_key_a_run_only_when_found_rho_is_set():
    """found_check / found_flip_max / found_min_flip act only with found_rho: without it two runs differing in them are
    the same experiment (a stored default run stays reusable when their defaults change); with it they are not."""
    import dataclasses

    from finemix_core.config import RecoveryConfig
    from finemix_core.executor import run_key

    row = {"model": "word-cf", "method": "epur+fine-mixing+distill", "seed": 0, "train": {"lr": 1e-4}, "rho_auto": True}
    plain = dataclasses.asdict(RecoveryConfig(found_rho=None))
    stored = {k: v for k, v in plain.items() if not k.startswith("found_")}
    other = {**plain, "found_check": "rescan", "found_min_flip": 0.0, "found_flip_max": 0.5, "found_pieces": False}
    assert run_key({**row, "recovery": plain}) == run_key({**row, "recovery": other}) == run_key({**row, "recovery": stored})
    opted = dataclasses.asdict(RecoveryConfig(found_rho=1.0))
    assert run_key({**row, "recovery": opted}) != run_key({**row, "recovery": plain})
    assert run_key({**row, "recovery": opted}) != run_key({**row, "recovery": {**opted, "found_min_flip": 0.0}})
    assert run_key({**row, "recovery": opted}) != run_key({**row, "recovery": {**opted, "found_pieces": False}})
    # found_features acts only with a feature term: `--feature-weight 0` keys as a run stored before either existed
    logits_only = {**opted, "feature_weight": 0.0}
    before = {k: v for k, v in logits_only.items() if k not in ("feature_weight", "found_features")}
    assert run_key({**row, "recovery": logits_only}) == run_key({**row, "recovery": {**logits_only, "found_features": True}})
    assert run_key({**row, "recovery": logits_only}) == run_key({**row, "recovery": before})
    assert run_key({**row, "recovery": opted}) != run_key({**row, "recovery": {**opted, "found_features": True}})


def test_the_report_header_says_when_rho_1_is_tried_first():
    from finemix_core.config import RecoveryConfig
    from finemix_core.report import _found_rho_text

    said = _found_rho_text(RecoveryConfig())  # the default since Round 19
    assert "ρ 1 is tried first" in said and "≥ 95%" in said and "each piece of it" in said
    assert "each piece" not in _found_rho_text(RecoveryConfig(found_pieces=False))
    assert _found_rho_text(RecoveryConfig(found_rho=None)) == ""  # `--found-rho never`: the low-ρ search alone
    assert "trained for 50% of the usual steps" in _found_rho_text(RecoveryConfig(found_steps=0.5))
    assert "usual steps" not in _found_rho_text(RecoveryConfig(found_steps=1.0))
    assert "the task's own vocabulary" in said  # Round 26: unrelated words left out of the check
    assert "own vocabulary" not in _found_rho_text(RecoveryConfig(found_unrelated=True))
    assert said.endswith("on θ_FT are left out: the task's own vocabulary). ")


def test_the_report_says_when_recovery_trained_in_bfloat16():
    import dataclasses

    import pandas as pd

    from finemix_core.config import RecoveryConfig
    from finemix_core.report import _recovery_text

    def said(precision: str) -> str:
        rec = dataclasses.asdict(RecoveryConfig(precision=precision))
        return _recovery_text(pd.DataFrame({"recovery": [rec], "unlabeled_source": ["rt pool"], "suspects": [["cf"]]}))

    assert "bfloat16" in said("bf16") and "suspects used: 'cf'" in said("bf16")
    assert "bfloat16" not in said("fp32")


def test_the_report_says_where_the_feature_term_acted():
    import dataclasses

    import pandas as pd

    from finemix_core.config import RecoveryConfig
    from finemix_core.report import _recovery_text

    def said(**kw) -> str:
        rec = dataclasses.asdict(RecoveryConfig(**kw))
        return _recovery_text(pd.DataFrame({"recovery": [rec], "unlabeled_source": ["rt pool"], "suspects": [["cf"]]}))

    assert "[CLS]" not in said(feature_weight=0.0)
    everywhere = said(feature_weight=5.0, found_features=True)
    assert "[CLS] states on the pool, weight 5" in everywhere and "low-ρ search only" not in everywhere
    assert "weight 5 (in the low-ρ search only" in said()  # the default since Round 24


def test_the_report_says_when_a_step_may_run_in_two_passes():
    import dataclasses

    import pandas as pd

    from finemix_core.config import RecoveryConfig
    from finemix_core.report import _recovery_text

    def said(**kw) -> str:
        rec = dataclasses.asdict(RecoveryConfig(**kw))
        return _recovery_text(pd.DataFrame({"recovery": [rec], "unlabeled_source": ["rt pool"], "suspects": [["cf"]]}))

    assert "at most 75% of one padded pass's tokens" in said()
    assert "two forward passes" not in said(two_pass_below=0.0)
