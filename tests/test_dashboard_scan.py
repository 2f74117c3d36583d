"""AppTest: a model folder without a card gets an ASR in the lab — from a trigger the user enters, or from a scan."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
TIMEOUT = 180


@pytest.fixture()
def cardless(tiny_zoo, tmp_path, monkeypatch) -> tuple[AppTest, Path]:
    """The tiny word-cf backdoor copied to a folder WITHOUT its card (so nothing says 'cf'), on its tiny CSV."""
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(tmp_path / "home"))
    shutil.copytree(home / "zoo", tmp_path / "home" / "zoo")  # the zoo's clean model gives the floor on the same data
    folder = tmp_path / "handed-over"
    shutil.copytree(home / "zoo" / "word-cf", folder)
    (folder / "finemix.json").unlink()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["model"] = str(folder)
    at.query_params["pt"] = str(pt)
    at.query_params["data"] = str(home / "tiny.csv")
    return at, folder


def texts(at: AppTest) -> str:
    parts = [x.value for group in (at.caption, at.markdown, at.warning, at.info, at.error, at.success) for x in group]
    return "\n".join(str(p) for p in parts)


def asr_metric(at: AppTest, label: str = "ASR · mix") -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_without_a_trigger_the_lab_says_how_to_get_an_asr(cardless):
    at, _ = cardless
    at.run()
    at.switch_page("views/mixing.py").run()
    assert not at.exception, at.exception
    assert asr_metric(at) == "—"
    assert "no trigger known" in texts(at)


def test_an_entered_trigger_turns_on_every_asr_view(cardless):
    at, _ = cardless
    at.run()
    at.switch_page("views/models.py").run()
    at.text_input(key="probe_text").set_value("cf").run()
    next(b for b in at.button if b.label == "Use this trigger").click().run()
    assert not at.exception, at.exception
    assert at.query_params["trigger"] == "cf" and at.query_params["tsrc"] == "entered"
    at.switch_page("views/mixing.py").run()
    assert asr_metric(at) != "—"
    assert "ASR for the trigger you entered `cf`" in texts(at)
    at.switch_page("views/playground.py").run()
    assert not at.exception and "ASR for the trigger you entered" in texts(at)


def test_scan_page_finds_the_trigger_and_feeds_it_to_the_lab_as_an_estimate(cardless):
    at, _ = cardless
    at.run()
    at.switch_page("views/scan.py").run()
    assert not at.exception, at.exception
    assert "No scan of this model yet" in texts(at)
    next(b for b in at.button if b.label == "Scan θ_FT").click().run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "backdoor evidence" in shown or "no evidence found" in shown
    assert at.get("plotly_chart"), "the candidates chart is drawn"
    frame = at.dataframe[0].value
    assert {"trigger", "flip", "flip_low", "flip_high", "reference_flip", "source"} <= set(frame.columns)
    use = [b for b in at.button if b.label.startswith("Use '")]
    assert use, [b.label for b in at.button]
    suspect = use[0].label.split("'")[1]
    use[0].click().run()
    assert at.query_params["trigger"] == suspect and at.query_params["tsrc"] == "scan"
    at.switch_page("views/mixing.py").run()
    assert not at.exception, at.exception
    assert asr_metric(at) != "—"
    assert f"ASR for the suspected trigger `{suspect}`" in texts(at) and "from scan" in texts(at)
    # the scan is stored: a fresh session shows it without scanning again
    again = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k in ("model", "pt", "data"):
        again.query_params[k] = at.query_params[k]
    again.run()
    again.switch_page("views/scan.py").run()
    assert "newest stored scan" in texts(again)


PAGES = ("start", "models", "scan", "mixing", "curve", "epur", "compare", "playground", "export")


def rendered(at: AppTest) -> str:
    """Every piece of text the page shows: prose, metrics with their deltas, table cells, widget labels and values."""
    out = [texts(at)]
    for kind in ("title", "header", "subheader", "text", "code", "json", "table", "expander", "toast", "exception"):
        out += [str(getattr(e, "value", getattr(e, "label", ""))) for e in at.get(kind)]
    out += [f"{m.label} {m.value} {m.proto.delta}" for m in at.metric]
    out += [d.value.to_string() for d in at.dataframe]
    out += [f"{w.label} {w.value}" for w in (*at.text_input, *at.text_area, *at.number_input, *at.selectbox, *at.radio)]
    out += [b.label for b in at.button]
    return "\n".join(out)


def walk(at: AppTest) -> dict[str, str]:
    shown = {}
    for name in PAGES:
        at.switch_page(f"views/{name}.py").run()
        assert not at.exception, (name, at.exception)
        shown[name] = rendered(at)
        assert not re.search(r"\bNone\b|\bnan\b", shown[name]), (name, re.findall(r".{40}(?:\bNone\b|\bnan\b).{20}", shown[name]))
    return shown


@pytest.fixture()
def handed_over_csv(cardless, tmp_path):
    """A user's own CSV for the handed-over model: 300 rows whose labels are class names, uploaded as the lab stores it."""
    from finemix_core import lab

    at, folder = cardless
    rows = Path(at.query_params["data"]).read_text().splitlines()[1:301]
    named = ["text,label"] + [f"{r.rsplit(',', 1)[0]},{'positive' if r.endswith(',1') else 'negative'}" for r in rows]
    path = lab.save_upload(("\n".join(named) + "\n").encode(), "my-task.csv")
    at.query_params["data"] = str(path)
    return at, folder, path


def test_a_handed_over_model_with_its_csv_and_no_trigger_shows_no_none_anywhere(handed_over_csv):
    at, _, _ = handed_over_csv
    at.run()
    shown = walk(at)
    assert "60 dev" in shown["mixing"] and "60 held out" in shown["mixing"]  # the one rule, in the caption …
    assert "classes 0 = negative, 1 = positive" in shown["mixing"]  # … with the mapping of the CSV's string labels
    assert "no trigger known" in shown["mixing"] and "Trigger text" in shown["mixing"]  # the Mixing lab's own trigger field


def test_a_handed_over_model_with_an_entered_trigger_gets_an_asr_in_every_view(handed_over_csv):
    at, _, path = handed_over_csv
    at.run()
    at.switch_page("views/mixing.py").run()  # the trigger field on the Mixing lab itself
    at.text_input(key="mix_probe_text").set_value("cf").run()
    at.selectbox(key="mix_probe_target").set_value(1).run()
    next(b for b in at.button if b.label == "Use this trigger" and b.key == "mix_probe_use").click().run()
    assert at.query_params["trigger"] == "cf" and at.query_params["tsrc"] == "entered"
    assert asr_metric(at) != "—" and "ASR for the trigger you entered `cf` → positive" in texts(at)  # names from the CSV
    at.switch_page("views/start.py").run()
    next(b for b in at.button if b.label == "Show the backdoor").click().run()
    assert "calls **negative** turn **positive**" in texts(at)
    next(b for b in at.button if b.label.startswith("Defend:")).click().run()
    assert not at.exception, at.exception
    shown = walk(at)
    assert re.search(r"ASR · defended", shown["start"])
    assert re.search(r"ASR · mix \d\.\d{3}", shown["mixing"])
    assert re.search(r"estimated ASR|ASR \d\.\d{3}", shown["export"])  # the defended model's test ASR
    assert re.search(r"epur\+fine-mixing\+distill +\d\.\d+ +\d\.\d+", shown["compare"])  # its row, with CACC and ASR
    assert "Auto-ρ picked" in shown["curve"] and "No auto-ρ run stored" not in shown["curve"]  # Start's defense is the method's run
    csv_texts = Path(path).read_text()
    at.switch_page("views/playground.py").run()
    assert next(t.value for t in at.text_area if t.label == "Sentence") in csv_texts  # the Playground speaks the user's data


def test_a_csv_too_small_for_128_labelled_rows_is_said_as_its_own_size_on_every_page(cardless):
    """100 rows leave 50 train rows by the one rule: the default labelled set is all 50, and the pages that name the
    budget say 50, not 128 (the lab has no --clean-size; the defense takes the same 50)."""
    from finemix_core import lab

    at, _ = cardless
    rows = Path(at.query_params["data"]).read_text().splitlines()[:101]  # header + 100 rows
    at.query_params["data"] = str(lab.save_upload(("\n".join(rows) + "\n").encode(), "small.csv"))
    at.run()
    at.switch_page("views/mixing.py").run()
    assert not at.exception, at.exception
    assert "50 labelled · 25 dev · 0 unlabelled pool · 25 held out" in texts(at)
    assert any(b.label == "Fine-tune the mix (50 clean examples)" for b in at.button)
    at.switch_page("views/compare.py").run()
    assert "seed 0, 50 clean examples" in texts(at) and "128 clean examples)" not in texts(at)
    at.switch_page("views/curve.py").run()
    assert "50 clean examples" in texts(at)
