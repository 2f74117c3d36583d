"""AppTest: a model folder without a card gets an ASR in the lab — from a trigger the user enters, or from a scan."""

from __future__ import annotations

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
