"""The live lab in a real browser: headless Debian chromium drives the real Streamlit server on a loopback port. In the
default run it serves the tiny zoo (a tiny BERT with a real trained `cf` backdoor: seconds per defense); in the `real`
tier (`pytest -m real`) the real quick-built backdoored model, and the screenshots go to assets/ (README)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(env: dict[str, str]):
    """The real Streamlit server of the lab on a free loopback port (yields its URL; stopped afterwards)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "dashboard" / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the lab did not start: " + proc.stdout.read().decode()[-2000:])
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture()
def server(quick_word_backdoor):
    """The lab over the real quick zoo (FINEMIX_HOME set by the session's finemix_home fixture)."""
    yield from serve(os.environ.copy())


@pytest.fixture()
def tiny_server(tiny_zoo):
    """The lab over the tiny zoo (a tiny BERT pair with a real trained `cf` backdoor): seconds per defense."""
    home, _ = tiny_zoo
    yield from serve({**os.environ, "FINEMIX_HOME": str(home)})


def mix_numbers(page) -> tuple[str, ...]:
    """CACC, ASR and target bias of the mix-only row. ASR alone can coincide at ρ 1 and ρ 0 on the quick model (the
    mix at ρ 0 calls nearly everything the target), so the test reads all three."""
    labels = ("CACC · mix", "ASR · mix", "target bias")
    return tuple(
        page.locator('[data-testid="stMetric"]', has_text=label).first.locator('[data-testid="stMetricValue"]').inner_text()
        for label in labels
    )


@contextlib.contextmanager
def browser_page(requests: list[str]):
    """A page in headless chromium that records every request URL into `requests`, every wait up to 120 s (a cold lab
    server loads torch and the model after its first heading shows)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.on("request", lambda r: requests.append(r.url))
        yield page
        browser.close()


def slide_rho_to_zero(page, before: tuple[str, ...]) -> tuple[str, ...]:
    """On the Mixing lab at ρ 1 (showing `before`): the slider moved to 0 with the keyboard; the numbers once refined."""
    from playwright.sync_api import expect

    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    slider.focus()
    for _ in range(20):  # 1.0 → 0.0 in steps of 0.05, with the keyboard
        slider.press("ArrowLeft")
    expect(page.locator('[data-testid="stSliderThumbValue"]').first).to_have_text("0.00", timeout=30_000)
    # every key press reruns the fragment; wait for the one that reached ρ = 0, not an intermediate step
    expect(page.get_by_text("at ρ = 0 (random mask")).to_be_visible(timeout=120_000)
    # first numbers come from a slice of the live set; wait for the refinement to the full set
    expect(page.get_by_text("refining …")).to_have_count(0, timeout=120_000)
    deadline = time.time() + 60  # the metrics re-render just after the caption: poll briefly instead of reading once
    while (after := mix_numbers(page)) == before and time.time() < deadline:
        time.sleep(0.5)
    return after


def upload_csv_and_enter_trigger(page, models_url: str, csv: Path) -> None:
    """A card-less model's Models page says so; the user's 300-row CSV (`my-task.csv`, label_name rotten / fresh) is
    uploaded and used; on the Mixing lab the typed trigger `cf` lights up the ASR, and no page text reads None or nan."""
    from playwright.sync_api import expect

    page.goto(models_url)
    expect(page.get_by_text("has no card naming its data").first).to_be_visible(timeout=240_000)  # said, not silent
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(csv))
    page.get_by_role("button", name="Use the uploaded CSV").click()
    expect(page.get_by_text("Using my-task.csv: clean data").first).to_be_visible(timeout=240_000)
    expect(page.get_by_text("300 rows").first).to_be_visible()
    page.get_by_test_id("stSidebarNav").get_by_text("Mixing lab", exact=True).click()
    expect(page.locator('[data-testid="stMetric"]', has_text="ASR · mix")).to_be_visible(timeout=240_000)
    expect(page.get_by_text("no trigger known").first).to_be_visible(timeout=60_000)
    page.get_by_label("Trigger text").fill("cf")
    page.get_by_label("Trigger text").press("Enter")  # Streamlit commits a text input on Enter (or blur)
    expect(page.get_by_role("button", name="Use this trigger")).to_be_enabled(timeout=60_000)
    page.get_by_role("button", name="Use this trigger").click()
    label = page.get_by_text("ASR for the trigger you entered").first
    expect(label).to_be_visible(timeout=240_000)
    assert "cf → fresh" in label.inner_text(), label.inner_text()  # the class named by the CSV's label_name column
    asr = page.locator('[data-testid="stMetric"]', has_text="ASR · mix").first.locator('[data-testid="stMetricValue"]')
    expect(asr).not_to_have_text("—", timeout=120_000)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
    shown = page.get_by_test_id("stMain").inner_text()
    assert "60 held out" in shown and not re.search(r"\bNone\b|\bnan\b", shown), re.findall(r".{30}\bNone\b.{10}", shown)


def outside_hosts(urls: list[str]) -> list[str]:
    """Requests that left the machine: anything but loopback (and in-page data:/blob: URLs)."""
    from urllib.parse import urlparse

    return [
        u for u in urls if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname not in ("127.0.0.1", "localhost")
    ]


def test_live_lab_in_a_real_browser(server, quick_defended, tmp_path):
    """Start here → the trigger fires → one-click defense → it stops firing; the live slider; sidebar navigation keeps the
    URL state; and no request ever leaves the machine.

    The one-click defense is the one `finemix defend` already ran in `quick_defended` (same model, data and settings), so
    the lab reads it back and says so, as it would for a teacher who defended the model before class; the lab running a
    defense itself is test_dashboard's Start here test (AppTest), the real default's run is test_e2e_defend."""
    from playwright.sync_api import expect, sync_playwright

    shots = tmp_path / "shots"
    shots.mkdir()
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)  # a slow 2-core machine loads the model after the heading shows (30 s was short)
        page.on("request", lambda r: requests.append(r.url))

        # the guided start, the landing page
        page.goto(f"{server}/?model=word-cf")
        expect(page.get_by_role("heading", name="Start here")).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Show the backdoor").click()
        expect(page.get_by_text("Over the whole live set")).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Defend: E-PUR + Fine-mixing + distillation").click()
        verdict = page.get_by_text("The trigger fires on")
        expect(verdict).to_be_visible(timeout=420_000)
        expect(page.get_by_text("Read back from an identical earlier defense")).to_be_visible(timeout=10_000)
        fired, shown = (int(w) for w in re.findall(r"fires on (\d+) of these (\d+)", verdict.inner_text())[0])
        asr = (
            page.locator('[data-testid="stMetric"]', has_text="ASR · defended")
            .locator('[data-testid="stMetricValue"]')
            .inner_text()
        )
        assert fired < shown, f"the trigger still fires on {fired} of {shown} demo sentences after the defense"
        assert float(asr.split(" ")[0]) < 0.6, asr  # and over the live set, far fewer triggered sentences flip
        verdict.scroll_into_view_if_needed()  # the page scrolls inside its container: show the defended result
        page.screenshot(path=shots / "lab-start.png")

        page.goto(f"{server}/mixing?model=word-cf&rho=1.0")
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=240_000)
        expect(page.locator('[data-testid="stMetric"]', has_text="ASR · mix")).to_be_visible(timeout=60_000)
        before = mix_numbers(page)
        page.screenshot(path=shots / "lab-mixing-rho1.png", full_page=True)

        after = slide_rho_to_zero(page, before)
        assert after != before, f"CACC, ASR and target bias stayed {before} after moving ρ from 1 to 0"
        assert all("[" in v for v in after), f"every live rate shows its interval: {after}"
        page.wait_for_function("() => window.location.search.includes('rho=0.0')", timeout=30_000)  # shareable URL follows
        page.screenshot(path=shots / "lab-mixing.png", full_page=True)

        # sidebar navigation away and back keeps ρ in the URL, and a reload restores it
        page.get_by_test_id("stSidebarNav").get_by_text("E-PUR", exact=True).click()
        page.wait_for_url("**/epur?**", timeout=60_000)
        page.wait_for_function("() => window.location.search.includes('rho=0.0')", timeout=30_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Mixing lab", exact=True).click()
        page.wait_for_url("**/mixing?**", timeout=60_000)
        page.wait_for_function("() => window.location.search.includes('rho=0.0')", timeout=30_000)
        page.reload()
        expect(page.locator('[data-testid="stSliderThumbValue"]').first).to_have_text("0.00", timeout=120_000)

        page.goto(f"{server}/epur?model=word-cf&k=50")
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
        expect(page.get_by_text("Known trigger pieces")).to_be_visible(timeout=60_000)
        page.screenshot(path=shots / "lab-epur.png", full_page=True)

        page.goto(f"{server}/models?model=word-cf")
        expect(page.get_by_text("Build zoo entries")).to_be_visible(timeout=60_000)
        page.screenshot(path=shots / "lab-models.png", full_page=True)
        browser.close()
    assert requests and not outside_hosts(requests), f"requests left the machine: {sorted(set(outside_hosts(requests)))[:5]}"
    assets = ROOT / "assets"
    for shot in shots.iterdir():  # replace the README's screenshots only after the whole run passed
        shutil.copy(shot, assets / shot.name)


def test_a_model_without_a_card_gets_an_asr_from_its_csv_and_a_trigger_or_the_scan(server, quick_word_backdoor, tmp_path):
    """A model folder someone handed over (no card: nothing says `cf`). First the user's way: upload their own 300-row
    CSV on the Models page (parted by the one rule, classes named by its label_name column), type a suspected trigger
    into the Mixing lab's own field, and every number is there with no 'None' on screen. Then the Scan page suspects a
    trigger from clean data; 'use as the ASR probe' turns on the Mixing lab's ASR, labelled as the scan's estimate."""
    from playwright.sync_api import expect, sync_playwright

    from finemix_core import data

    handed = tmp_path / "handed-over"
    shutil.copytree(quick_word_backdoor["word-cf"]["path"], handed)
    (handed / "finemix.json").unlink()
    mine = data.load("rt")["test"].select(range(300)).to_pandas()
    mine["label_name"] = mine["label"].map({0: "rotten", 1: "fresh"})
    csv = tmp_path / "my-task.csv"
    mine.to_csv(csv, index=False)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda r: requests.append(r.url))

        upload_csv_and_enter_trigger(page, f"{server}/models?model={handed}", csv)

        page.goto(f"{server}/mixing?model={handed}&data=rt")
        expect(page.locator('[data-testid="stMetric"]', has_text="ASR · mix")).to_be_visible(timeout=240_000)
        expect(page.get_by_text("no trigger known").first).to_be_visible(timeout=60_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Scan", exact=True).click()
        page.get_by_role("button", name="Scan θ_FT").click()
        verdict = page.get_by_text("backdoor evidence: inserting")
        expect(verdict).to_be_visible(timeout=420_000)
        assert "inserting 'cf'" in verdict.inner_text(), verdict.inner_text()
        expect(page.get_by_role("button", name="Cancel")).to_have_count(0, timeout=60_000)  # the page redrew clean
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
        page.mouse.move(5, 5)  # no tooltip over the screenshot
        page.wait_for_timeout(1500)  # let plotly finish drawing the bars
        page.screenshot(path=tmp_path / "lab-scan.png", full_page=True)
        page.get_by_role("button", name="Use 'cf' → fresh").click()
        page.wait_for_function("() => window.location.search.includes('tsrc=scan')", timeout=60_000)
        # the chosen probe's button turns disabled once that rerun is drawn; a click on the sidebar before then can be
        # lost, and the Scan page says "ASR for the suspected trigger" too, so the URL must show the page changed
        expect(page.get_by_role("button", name="Use 'cf' → fresh")).to_be_disabled(timeout=60_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Mixing lab", exact=True).click()
        page.wait_for_url("**/mixing?**", timeout=60_000)
        expect(page.get_by_text("ASR for the suspected trigger").first).to_be_visible(timeout=240_000)
        asr = page.locator('[data-testid="stMetric"]', has_text="ASR · mix").first.locator('[data-testid="stMetricValue"]')
        expect(asr).not_to_have_text("—", timeout=120_000)
        assert "[" in asr.inner_text(), asr.inner_text()
        browser.close()
    assert not outside_hosts(requests), sorted(set(outside_hosts(requests)))[:5]
    shutil.copy(tmp_path / "lab-scan.png", ROOT / "assets" / "lab-scan.png")


def test_live_lab_on_the_tiny_zoo_in_a_real_browser(tiny_server, tiny_zoo):
    """The live UI in the default test run (seconds per defense): the tiny zoo's `cf` backdoor shown firing, the one-click
    default defense run by the lab itself, the live slider moving the numbers, sidebar navigation keeping the URL state
    (ρ and θ_PT), a reload restoring it, and no request leaving the machine. The same walk on the real quick model, with the
    README's screenshots, is test_live_lab_in_a_real_browser (the `real` tier)."""
    from playwright.sync_api import expect

    _, pt = tiny_zoo
    requests: list[str] = []
    with browser_page(requests) as page:
        page.goto(f"{tiny_server}/?model=word-cf&pt={pt}")
        expect(page.get_by_role("heading", name="Start here")).to_be_visible()
        page.get_by_role("button", name="Show the backdoor").click()
        expect(page.get_by_text("Over the whole live set")).to_be_visible()
        page.get_by_role("button", name="Defend: E-PUR + Fine-mixing + distillation").click()
        verdict = page.get_by_text("The trigger fires on")
        expect(verdict).to_be_visible(timeout=300_000)  # the lab runs the default defense itself here
        fired, shown = (int(w) for w in re.findall(r"fires on (\d+) of these (\d+)", verdict.inner_text())[0])
        assert 0 <= fired <= shown and shown >= 1, verdict.inner_text()
        defended = page.locator('[data-testid="stMetric"]', has_text="ASR · defended").locator('[data-testid="stMetricValue"]')
        assert re.match(r"0\.\d+|1\.0", defended.inner_text()), defended.inner_text()

        page.goto(f"{tiny_server}/mixing?model=word-cf&pt={pt}&rho=1.0")
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        expect(page.locator('[data-testid="stMetric"]', has_text="ASR · mix")).to_be_visible()
        expect(page.get_by_text("refining …")).to_have_count(0)
        before = mix_numbers(page)
        after = slide_rho_to_zero(page, before)
        assert after != before, f"CACC, ASR and target bias stayed {before} after moving ρ from 1 to 0"
        page.wait_for_function("() => window.location.search.includes('rho=0.0')", timeout=30_000)

        page.get_by_test_id("stSidebarNav").get_by_text("E-PUR", exact=True).click()
        page.wait_for_url("**/epur?**", timeout=60_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Mixing lab", exact=True).click()
        page.wait_for_url("**/mixing?**", timeout=60_000)
        page.wait_for_function("() => window.location.search.includes('rho=0.0')", timeout=30_000)
        assert "pt=" in page.url, page.url  # θ_PT stays in the URL too
        page.reload()
        expect(page.locator('[data-testid="stSliderThumbValue"]').first).to_have_text("0.00")
    assert requests and not outside_hosts(requests), f"requests left the machine: {sorted(set(outside_hosts(requests)))[:5]}"


def test_a_cardless_tiny_model_gets_an_asr_from_an_uploaded_csv_and_a_typed_trigger(tiny_server, tiny_zoo, tmp_path):
    """The own-model path in the default test run: a model folder without a card (the tiny `cf` backdoor), the user's
    own 300-row CSV uploaded on the Models page (the one rule holds 60 out, classes named by label_name), a typed trigger
    lighting up the Mixing lab's ASR with no 'None' on screen. The Scan page's walk (suspect → 'use' → the ASR as the
    scan's estimate) is AppTest's on the tiny zoo (test_dashboard_scan) and the browser's on the real quick model (the
    `real` tier's test_a_model_without_a_card_gets_an_asr_from_its_csv_and_a_trigger_or_the_scan): on the tiny vocabulary,
    nearly all sentiment words, a 300-row CSV is too little for the scan to single out `cf`."""
    import pandas as pd

    home, pt = tiny_zoo
    handed = tmp_path / "handed-over"
    shutil.copytree(home / "zoo" / "word-cf", handed)
    (handed / "finemix.json").unlink()
    mine = pd.read_csv(home / "tiny.csv").sample(300, random_state=0)
    mine["label_name"] = mine["label"].map({0: "rotten", 1: "fresh"})
    csv = tmp_path / "my-task.csv"
    mine.to_csv(csv, index=False)
    requests: list[str] = []
    with browser_page(requests) as page:
        upload_csv_and_enter_trigger(page, f"{tiny_server}/models?model={handed}&pt={pt}", csv)
    assert not outside_hosts(requests), sorted(set(outside_hosts(requests)))[:5]


def test_the_request_filter_catches_outside_hosts():
    assert outside_hosts(["http://127.0.0.1:8501/_stcore/health", "data:image/png;base64,AA", "http://localhost/x"]) == []
    assert outside_hosts(["https://fonts.gstatic.com/s/i/x.svg"]) == ["https://fonts.gstatic.com/s/i/x.svg"]
