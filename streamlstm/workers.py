"""``workers: N``: N daemon processes in one consumer group, behind one metrics endpoint.

One Python process scores on about one core: Kafka's record parsing, the loop and the numpy
glue take turns on the GIL. With ``workers`` above 1, ``streamlstm run`` becomes a supervisor
that starts that many copies of itself as child processes. Each is a complete daemon (its own
consumer in the group, pipeline, sink, checkpoints and hot reload), and Kafka shares the
partitions between them, so a series stays with one worker exactly as it would with separate
daemons (the README's "Scaling out"). The supervisor holds no Kafka client and no model. It

* serves the configured metrics port: ``/metrics`` is every worker's metrics with a ``worker``
  label, plus ``streamlstm_worker_up`` and ``streamlstm_worker_restarts_total``; ``/healthz``
  and ``/readyz`` are ok only when every worker says so; ``/series`` asks each worker;
* forwards SIGTERM and SIGINT (stop) and SIGHUP (reload) to the workers and waits for them;
* starts a worker again when it exits on its own, after a backoff (1 s, doubling to 60 s,
  back to 1 s once a worker has run for a minute).

Workers serve their endpoints on 127.0.0.1, on ports the system picks, and tell the supervisor
which through a file (`WORKER_ENV`, `PORT_FILE_ENV`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from streamlstm.metrics import MetricsServer

log = logging.getLogger(__name__)

#: Set in each worker's environment: ``"<index>/<workers>"``; a process with it runs as a worker.
WORKER_ENV = "STREAMLSTM_WORKER"
#: Where a worker writes the port its endpoint is bound to.
PORT_FILE_ENV = "STREAMLSTM_WORKER_PORT_FILE"

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
# A worker that ran this long before exiting starts again after the initial backoff.
STEADY_S = 60.0
# How long a stop waits for the workers to finish their batch and close before killing them.
STOP_GRACE_S = 30.0
_TURN_S = 0.2


def _die_with_parent() -> None:
    """In a new worker (Linux): be sent SIGTERM when the supervisor dies, even by SIGKILL, so
    no worker outlives it and keeps its partitions."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def worker_index(environ: Mapping[str, str]) -> int | None:
    """This process's worker index, or None when it is not a supervised worker."""
    raw = environ.get(WORKER_ENV)
    if not raw:
        return None
    return int(raw.split("/", 1)[0])


def write_port(environ: Mapping[str, str], port: int) -> None:
    """A worker's last step of start-up: tell the supervisor where its endpoint is."""
    target = environ.get(PORT_FILE_ENV)
    if not target:
        return
    temporary = Path(target + ".tmp")
    temporary.write_text(str(port), encoding="ascii")
    temporary.replace(target)


@dataclass
class _Worker:
    index: int
    port_file: Path
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    started: float = 0.0
    next_start: float = 0.0
    backoff_s: float = BACKOFF_INITIAL_S
    restarts: int = 0
    served: bool = False  # it has served its endpoint at least once
    exit_code: int | None = None  # how it last exited

    def url(self, path: str) -> str | None:
        return None if self.port is None else f"http://127.0.0.1:{self.port}{path}"


class Supervisor:
    """Runs ``command`` (``streamlstm run ...``) as ``workers`` child processes (module doc).

    ``spawn`` starts one child (``subprocess.Popen`` by default) and ``clock`` is monotonic
    seconds; tests pass their own.
    """

    def __init__(self, command: Sequence[str], workers: int, host: str, port: int,
                 environ: Mapping[str, str], request_timeout_s: float = 10.0,
                 fetch_timeout_s: float = 5.0,
                 spawn: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if workers < 2:
            raise ValueError("a supervisor runs at least two workers")
        self.command = list(command)
        self.environ = dict(environ)
        self.fetch_timeout_s = fetch_timeout_s
        self._spawn = spawn
        self._clock = clock
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._serving = False
        self._directory = Path(tempfile.mkdtemp(prefix="streamlstm-workers-"))
        self.workers = [_Worker(i, self._directory / f"worker-{i}.port")
                        for i in range(workers)]
        self.registry = CollectorRegistry()
        self.registry.register(WorkerMetrics(self))
        self.server = MetricsServer(self.registry, host, port, health=self.health,
                                    ready=self.ready, request_timeout_s=request_timeout_s,
                                    inspect=self.inspect)

    # ---- lifecycle ----

    def start(self) -> None:
        """Start every worker and the endpoint."""
        for worker in self.workers:
            self._start(worker)
        self.server.start()
        self._serving = True

    def stop(self) -> None:
        """Ask `run` to return (signal-handler safe)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Pass a reload (SIGHUP) on to every worker (signal-handler safe)."""
        self._reload.set()

    def run(self) -> None:
        """Watch the workers until stopped: restart the ones that exit, pass reloads on."""
        while not self._stop.is_set():
            self.check()
            self._stop.wait(_TURN_S)

    def check(self) -> None:
        """One look at every worker: pass a reload on, read ports as they appear, restart
        exited workers."""
        if self._reload.is_set():
            self._reload.clear()
            self._signal(signal.SIGHUP)
        now = self._clock()
        for worker in self.workers:
            process = worker.process
            if process is None:
                if now >= worker.next_start and not self._stop.is_set():
                    worker.restarts += 1
                    self._start(worker)
                continue
            if worker.port is None and worker.port_file.exists():
                worker.port = int(worker.port_file.read_text(encoding="ascii"))
                worker.served = True
            code = process.poll()
            if code is None:
                continue
            worker.exit_code = code
            if not worker.served:
                # It never got as far as serving: a bad setting, a model that does not
                # load. Starting it again would fail again, so everything stops.
                log.error("worker %d failed to start (status %d); stopping", worker.index,
                          code)
                worker.process = None
                self._stop.set()
                return
            ran = now - worker.started
            worker.backoff_s = (BACKOFF_INITIAL_S if ran >= STEADY_S
                                else min(worker.backoff_s * 2, BACKOFF_MAX_S))
            log.error("worker %d exited with status %d after %.0fs; starting it again in "
                      "%.0fs", worker.index, code, ran, worker.backoff_s)
            worker.process, worker.port = None, None
            worker.next_start = now + worker.backoff_s

    def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after `STOP_GRACE_S`) and the endpoint."""
        self._stop.set()
        self._signal(signal.SIGTERM)
        deadline = self._clock() + STOP_GRACE_S
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0fs; killing it", worker.index,
                          STOP_GRACE_S)
                process.kill()
                process.wait()
            worker.exit_code = process.returncode
            if process.returncode:
                log.error("worker %d stopped with status %d", worker.index, process.returncode)
        if self._serving:
            self.server.stop()
        shutil.rmtree(self._directory, ignore_errors=True)

    @property
    def exit_status(self) -> int:
        """0 when every worker stopped cleanly, else the status of one that did not."""
        failed = [w.exit_code for w in self.workers if w.exit_code]
        return (failed[0] if failed[0] > 0 else 1) if failed else 0  # < 0: killed by a signal

    def _start(self, worker: _Worker) -> None:
        worker.port_file.unlink(missing_ok=True)
        env = dict(self.environ)
        env[WORKER_ENV] = f"{worker.index}/{len(self.workers)}"
        env[PORT_FILE_ENV] = str(worker.port_file)
        worker.process = self._spawn(self.command, env=env, preexec_fn=_die_with_parent)
        worker.started = self._clock()
        worker.port = None
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _signal(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    # ---- the endpoint ----

    def fetch(self, worker: _Worker, path: str) -> tuple[int, bytes] | None:
        """``(status, body)`` of GET ``path`` on a worker's endpoint; None if unreachable."""
        url = worker.url(path)
        if url is None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=self.fetch_timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except (OSError, ValueError):
            return None

    def health(self) -> tuple[bool, str]:
        return self._probe("/healthz")

    def ready(self) -> tuple[bool, str]:
        return self._probe("/readyz")

    def _probe(self, path: str) -> tuple[bool, str]:
        for worker in self.workers:
            answer = self.fetch(worker, path)
            if answer is None:
                state = "not running" if worker.process is None else "not answering yet"
                return False, f"worker {worker.index} {state}"
            status, body = answer
            if status != 200:
                said = body.decode("utf-8", "replace").strip().removeprefix("not ok: ")
                return False, f"worker {worker.index}: {said}"
        return True, ""

    def inspect(self, series: str) -> dict[str, Any] | None:
        query = "/series?" + urllib.parse.urlencode({"name": series})
        for worker in self.workers:
            answer = self.fetch(worker, query)
            if answer is not None and answer[0] == 200:
                found: dict[str, Any] = json.loads(answer[1])
                found["worker"] = worker.index
                return found
        return None


class WorkerMetrics(Collector):
    """Every worker's metrics, each sample labelled with its ``worker``, merged by family."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        supervisor = self.supervisor
        up = GaugeMetricFamily("streamlstm_worker_up", "Whether each worker's metrics could "
                               "be read (1) or not (0).", labels=["worker"])
        restarts = Metric("streamlstm_worker_restarts", "Workers started again after they "
                          "exited on their own.", "counter")
        families: dict[str, Metric] = {}
        for worker in supervisor.workers:
            label = str(worker.index)
            restarts.add_sample("streamlstm_worker_restarts_total", {"worker": label},
                                float(worker.restarts))
            answer = supervisor.fetch(worker, "/metrics")
            ok = answer is not None and answer[0] == 200
            up.add_metric([label], 1.0 if ok else 0.0)
            if not ok:
                continue
            assert answer is not None
            merge_families(answer[1].decode("utf-8"), label, families)
        yield up
        yield restarts
        yield from families.values()


def merge_families(text: str, worker: str, into: dict[str, Metric]) -> None:
    """Parse one worker's exposition ``text`` and add its samples, labelled ``worker``, to the
    families in ``into`` (by name; a family not there yet is added)."""
    for family in text_string_to_metric_families(text):
        merged = into.get(family.name)
        if merged is None:
            merged = into[family.name] = Metric(family.name, family.documentation, family.type,
                                                family.unit)
        for sample in family.samples:
            merged.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value,
                              sample.timestamp, sample.exemplar)


def supervise(command: Sequence[str], workers: int, host: str, port: int,
              request_timeout_s: float, environ: Mapping[str, str] | None = None) -> int:
    """Run ``command`` as ``workers`` supervised workers until SIGTERM/SIGINT; the exit status."""
    supervisor = Supervisor(command, workers, host, port,
                            os.environ if environ is None else environ,
                            request_timeout_s=request_timeout_s)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stop())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stop())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: supervisor.request_reload())
    supervisor.start()
    log.info("%d workers; metrics on http://%s:%d/metrics", workers, host,
             supervisor.server.port)
    try:
        supervisor.run()
    finally:
        supervisor.close()
    log.info("stopped cleanly" if supervisor.exit_status == 0 else "stopped")
    return supervisor.exit_status


def worker_command(config: str | None) -> list[str]:
    """The command line a worker runs: this interpreter, ``streamlstm run`` and the config."""
    return [sys.executable, "-m", "streamlstm", "run",
            *(["--config", config] if config else [])]
