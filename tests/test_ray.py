"""The Ray executor on a real local Ray cluster (ray.init(num_cpus=2), started and stopped here) running small reports on
the tiny zoo: rows identical to the in-process executor's, nothing recomputed on a second run, a run that raises is
reported with its spec while the others land, and a worker SIGKILLed mid-run is retried without leaving a partial row."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from finemix_core import report, store
from finemix_core.errors import FinemixError
from finemix_core.executor import SequentialExecutor
from finemix_core.ray_executor import RayExecutor
from tests.test_report import CHEAP

METHODS = ("none", "fine-tuning", "epur+fine-mixing+distill")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fresh_home(tmp_path: Path, zoo_home: Path, name: str, monkeypatch) -> Path:
    """An empty results database beside the tiny zoo (the other report tests store their runs in the zoo's home)."""
    home = tmp_path / name
    home.mkdir()
    (home / "zoo").symlink_to(zoo_home / "zoo")
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    return home


def row_count(home: Path) -> int:
    with sqlite3.connect(home / "results.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["seconds"]).sort_values(["method", "seed", "clean_size"]).reset_index(drop=True)


def test_ray_rows_match_sequential_and_resume(tiny_zoo, local_ray, tmp_path, monkeypatch):
    zoo_home, pt = tiny_zoo
    cfg = report.ReportConfig(
        methods=METHODS,
        seeds=(0, 1),
        clean_size=32,
        sizes=(),
        fixed_rhos=(0.5,),
        loose_delta=None,
        pretrained=str(pt),
        defense=CHEAP,
    )
    fresh_home(tmp_path, zoo_home, "seq", monkeypatch)
    seq = report.run(cfg, executor=SequentialExecutor(), log=lambda m: None)
    home = fresh_home(tmp_path, zoo_home, "ray", monkeypatch)
    executor = RayExecutor("auto", ship="object-store")  # joins the test's Ray; models travel through the object store
    par = report.run(cfg, executor=executor, log=lambda m: None)
    assert par.execution.ran == 7 and par.execution.reused == 0 and par.execution.failed == [] and par.execution.retries == 0
    assert par.execution.shipped_bytes > 0 and "Ray" in par.execution.executor
    assert {r["device"] for r in par.used.values()} == {"cpu"}
    pd.testing.assert_frame_equal(comparable(seq.main), comparable(par.main))  # same seeds → the same metrics, search, ρ, flags
    pd.testing.assert_frame_equal(comparable(seq.fixed), comparable(par.fixed))
    assert row_count(home) == 7  # one row per run, written by the driver

    again = report.run(cfg, executor=RayExecutor("auto"), log=lambda m: None)  # everything stored: nothing is recomputed
    assert again.execution.ran == 0 and again.execution.reused == 7 and row_count(home) == 7
    pd.testing.assert_frame_equal(comparable(par.main), comparable(again.main))


def test_a_run_that_raises_is_named_and_the_others_land(tiny_zoo, local_ray, tmp_path, monkeypatch):
    zoo_home, pt = tiny_zoo
    home = fresh_home(tmp_path, zoo_home, "fail", monkeypatch)
    # the tiny CSV's train part has 660 rows: a 10,000-example clean set fails inside its worker
    cfg = report.ReportConfig(
        methods=("none", "fine-tuning"),
        seeds=(0,),
        clean_size=32,
        sizes=(10_000,),
        size_entries=("word-cf",),
        size_methods=("fine-tuning",),
        fixed_rhos=(),
        loose_delta=None,
        pretrained=str(pt),
        defense=CHEAP,
    )
    with pytest.raises(FinemixError) as err:
        report.run(cfg, executor=RayExecutor("auto"), log=lambda m: None)
    message = str(err.value)
    assert "1 of 3 runs failed" in message and "word-cf fine-tuning seed 0 n 10000" in message and "larger than the" in message
    assert "\n" not in message and "re-run" in message
    stored = store.runs(kind="report")
    assert row_count(home) == 2 and sorted(r["method"] for r in stored) == ["fine-tuning", "none"]
    assert all(r["config"]["clean_size"] == 32 for r in stored)


def test_a_worker_killed_mid_run_is_retried_without_a_partial_row(tiny_zoo, local_ray, tmp_path, monkeypatch):
    zoo_home, pt = tiny_zoo
    home = fresh_home(tmp_path, zoo_home, "kill", monkeypatch)
    cfg = report.ReportConfig(
        methods=METHODS, seeds=(0,), clean_size=32, sizes=(), fixed_rhos=(), loose_delta=None, pretrained=str(pt), defense=CHEAP
    )
    executor = RayExecutor("auto", retries=2)
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["path"] = report.write(
                tmp_path / "rep", cfg, "finemix report --ray (test)", executor=executor, log=lambda m: None
            )
        except BaseException as exc:  # noqa: BLE001 — surfaced by the assertion below
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and driver.is_alive() and time.monotonic() < deadline:
        try:
            running = ray.get(ray.get_actor(executor.attempt_log_name).running.remote())
        except ValueError:  # the attempt log is not up yet
            running = {}
        if running:
            killed = next(iter(running.values()))
            os.kill(killed, signal.SIGKILL)  # the worker dies mid-run, as on an OOM kill or a lost node
        time.sleep(0.05)
    driver.join(timeout=180)
    assert killed is not None, "no run was seen running"
    assert "error" not in outcome, outcome.get("error")
    text = (outcome["path"] / "report.md").read_text()
    assert "3 runs now, 0 reused, 0 failed, 1 retries" in text, text[:1200]
    assert row_count(home) == 3  # each run stored once and whole: the killed attempt wrote nothing
    rows = pd.read_csv(outcome["path"] / "runs.csv")
    assert sorted(rows.method) == sorted(METHODS) and rows[["cacc", "asr", "dev_acc"]].notna().all().all()


def test_the_default_needs_no_ray(tiny_zoo, tmp_path, monkeypatch):
    """The embedded default imports no Ray: a report runs with `import ray` made to fail."""
    import subprocess

    zoo_home, pt = tiny_zoo
    home = fresh_home(tmp_path, zoo_home, "noray", monkeypatch)
    code = (
        "import sys; sys.modules['ray'] = None\n"  # any `import ray` now raises ImportError
        "from finemix_core import report\n"
        "from tests.test_report import CHEAP\n"
        f"cfg = report.ReportConfig(methods=('none',), seeds=(0,), clean_size=32, sizes=(), fixed_rhos=(), loose_delta=None, "
        f"pretrained={str(pt)!r}, defense=CHEAP)\n"
        "runs = report.run(cfg, log=lambda m: None)\n"
        "print(runs.execution.executor, runs.execution.ran)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=300,
        env={**os.environ, "FINEMIX_HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "sequential (in process) 1"
