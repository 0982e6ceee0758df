"""The HTTP endpoint: idle connections are closed after the request timeout, probe reasons are
one short line without data, and the standard process_*/python_* families are exported."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from streamlstm import config
from streamlstm.metrics import MAX_REASON_CHARS, Metrics, MetricsServer, Probe


@pytest.fixture
def serve() -> Iterator:
    servers: list[MetricsServer] = []

    def start(ready: Probe = lambda: (True, ""), timeout: float = 0.3,
              ) -> tuple[MetricsServer, CollectorRegistry]:
        registry = CollectorRegistry()
        Metrics(registry)
        server = MetricsServer(registry, "127.0.0.1", 0, health=lambda: (True, ""),
                               ready=ready, request_timeout_s=timeout)
        server.start()
        servers.append(server)
        return server, registry

    yield start
    for server in servers:
        server.stop()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_an_idle_connection_is_closed_by_the_server(serve) -> None:
    server, _ = serve(timeout=0.3)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        for sock in idle:
            sock.settimeout(30)  # only a bound for a broken server; it closes long before
            sock.sendall(b"GET /metr")  # half a request line, then nothing
            assert sock.recv(1024) == b"", "the server must close an idle connection"
        assert get(server.port, "/healthz") == (200, "ok\n")
    finally:
        for sock in idle:
            sock.close()


def test_a_readiness_reason_is_one_short_line_without_data(serve) -> None:
    body = "x" * 5000
    server, _ = serve(ready=lambda: (False, f"InfluxDB said\n{body}\x00\x1b[31m"))
    status, text = get(server.port, "/readyz")
    assert status == 503
    assert text == "not ok: InfluxDB said\n"
    server2, _ = serve(ready=lambda: (False, "y" * 1000 + "\x07"))
    status, text = get(server2.port, "/readyz")
    assert status == 503 and text.count("\n") == 1
    assert len(text) <= len("not ok: \n") + MAX_REASON_CHARS and "\x07" not in text


def test_the_standard_collectors_are_on_the_daemons_registry(serve) -> None:
    server, registry = serve()
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
    assert registry.get_sample_value("process_resident_memory_bytes") > 0
    assert any(s.name == "python_info" for f in registry.collect() for s in f.samples)
    assert registry.get_sample_value("python_gc_objects_collected_total",
                                     {"generation": "0"}) is not None
    status, text = get(server.port, "/metrics")
    assert status == 200 and "\nprocess_open_fds " in text and "streamlstm_ready " in text


def test_the_bind_address_and_timeout_are_settings() -> None:
    defaults = config.load(None, {}).metrics
    assert defaults.host == "0.0.0.0" and defaults.request_timeout_s == 10.0
