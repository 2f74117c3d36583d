"""`finemix lab` is the server process itself: stopping it (SIGTERM to its PID) leaves nothing listening."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_to_finemix_lab_leaves_nothing_listening(tiny_zoo, tmp_path):
    home, _ = tiny_zoo
    port = _free_port()
    env = {**os.environ, "FINEMIX_HOME": str(home), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finemix_core.cli", "lab", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None, "finemix lab exited before serving"
            assert time.monotonic() < deadline, "the lab did not start serving within 60 s"
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # to the PID `finemix lab` printed, as a user's kill would
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(port), "something still serves the lab's port after SIGTERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
