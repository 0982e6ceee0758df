"""InfluxDB 1.8's v2 compatibility endpoints, stood in front of an InfluxDB 1.x engine.

Debian ships InfluxDB 1.6, which has ``/write`` and ``/query`` but not ``/api/v2/write`` nor
``/health``, the two endpoints influxdb-client (and so our sink) uses. This small HTTP server
adds them the way InfluxDB 1.8 does:

* ``POST /api/v2/write?org=..&bucket=DB[/RP]&precision=ns|us|ms|s`` becomes
  ``POST /write?db=DB&rp=RP&precision=n|u|ms|s`` upstream. A gzip body is unpacked here. The
  org is ignored; ``Authorization: Token user:password`` becomes ``u``/``p`` parameters.
  Success is 204; a failure keeps the upstream status with an InfluxDB 2 style JSON body
  ``{"code": "...", "message": "..."}``.
* ``GET /health`` answers 200 ``{"status": "pass"}`` when upstream ``/ping`` does, else 503
  ``{"status": "fail"}``.
* ``/ping``, ``/query`` and ``/write`` are passed through unchanged, so v1 readers (InfluxQL,
  Grafana) can use the same URL.

It is a development and test aid, not a production proxy.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urlsplit

logger = logging.getLogger(__name__)

# v2 precision -> v1 precision.
_PRECISIONS = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}

# InfluxDB 2 error codes by HTTP status.
_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request too large",
    422: "unprocessable entity",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}

_PASSTHROUGH_PATHS = {"/ping", "/query", "/write"}

# Headers that describe one hop, not the message; never copied between connections.
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "expect",
}


class InfluxV2Shim:
    """HTTP server adding ``/api/v2/write`` and ``/health`` to the InfluxDB 1.x at ``upstream_url``.

    ``port=0`` (the default) lets the kernel pick a free port; ``url`` tells which after
    ``start()``. Requests are forwarded with a ``timeout`` in seconds.
    """

    def __init__(
        self,
        upstream_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream_url must be http://host:port, got {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = host
        self.port = port
        self.timeout = timeout
        self._server: _ShimServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running shim."""
        if self._server is None:
            raise RuntimeError("the shim is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        """Bind the socket and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _ShimServer((self.host, self.port), _Handler)
        server.shim = self
        thread = threading.Thread(
            target=server.serve_forever, name="influx-v2-shim", kwargs={"poll_interval": 0.1}
        )
        thread.daemon = True
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def forward(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request upstream; returns status, headers and the (undecoded) body.

        Raises OSError when upstream cannot be reached.
        """
        conn = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.timeout
        )
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()


class _ShimServer(ThreadingHTTPServer):
    daemon_threads = True
    shim: InfluxV2Shim


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps the client's connection open between writes; every response below sets
    # Content-Length (or is a 204) so that is safe.
    protocol_version = "HTTP/1.1"
    server: _ShimServer

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        path = urlsplit(self.path).path
        if path == "/api/v2/write" and self.command == "POST":
            self._v2_write()
        elif path == "/health" and self.command in ("GET", "HEAD"):
            self._health()
        elif path in _PASSTHROUGH_PATHS:
            self._passthrough()
        else:
            self._read_body()
            self._send_v2_error(404, f"path not found: {self.command} {path}")

    def _v2_write(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        bucket = query.get("bucket", [""])[0]
        precision = query.get("precision", ["ns"])[0]
        body = self._read_body()
        if not bucket:
            self._send_v2_error(400, "bucket is required")
            return
        if precision not in _PRECISIONS:
            self._send_v2_error(400, f"invalid precision {precision!r}; use ns, us, ms or s")
            return
        if "gzip" in self.headers.get("Content-Encoding", "").lower():
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                self._send_v2_error(400, f"invalid gzip body: {exc}")
                return
        db, _, rp = bucket.partition("/")
        params = [("db", db)]
        if rp:
            params.append(("rp", rp))
        params.append(("precision", _PRECISIONS[precision]))
        params.extend(self._token_credentials())
        try:
            status, headers, payload = self.server.shim.forward(
                "POST",
                "/write?" + urlencode(params),
                body,
                {"Content-Type": "text/plain; charset=utf-8"},
            )
        except OSError as exc:
            self._send_v2_error(503, f"InfluxDB at {self.server.shim.upstream_url}: {exc}")
            return
        if status == 204:
            self._send(204, [], b"")
        else:
            self._send_v2_error(status, _upstream_message(headers, payload))

    def _health(self) -> None:
        self._read_body()
        shim = self.server.shim
        try:
            status, headers, _ = shim.forward("GET", "/ping", None, {})
        except OSError as exc:
            status, headers, reason = 0, [], str(exc)
        else:
            reason = f"/ping answered {status}"
        version = _header(headers, "X-Influxdb-Version") or ""
        ok = status == 204
        document: dict[str, Any] = {
            "name": "influxdb",
            "message": "ready for queries and writes" if ok else f"{shim.upstream_url}: {reason}",
            "status": "pass" if ok else "fail",
            "checks": [],
            "version": version,
            "commit": "",
        }
        self._send_json(200 if ok else 503, document)

    def _passthrough(self) -> None:
        split = urlsplit(self.path)
        body = self._read_body() if self.command == "POST" else None
        credentials = self._token_credentials()
        query = split.query
        if credentials:
            query = "&".join(q for q in (query, urlencode(credentials)) if q)
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in _HOP_HEADERS
            and not (name.lower() == "authorization" and value.startswith("Token"))
        }
        path = split.path + (f"?{query}" if query else "")
        try:
            status, response_headers, payload = self.server.shim.forward(
                self.command, path, body, headers
            )
        except OSError as exc:
            self._send_v2_error(503, f"InfluxDB at {self.server.shim.upstream_url}: {exc}")
            return
        kept = [(n, v) for n, v in response_headers if n.lower() not in _HOP_HEADERS]
        self._send(status, kept, payload)

    def _token_credentials(self) -> list[tuple[str, str]]:
        """``Authorization: Token user:password`` (InfluxDB 1.8 style) as v1 ``u``/``p``."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme != "Token" or ":" not in token:
            return []
        user, _, password = token.strip().partition(":")
        return [("u", user), ("p", password)]

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_v2_error(self, status: int, message: str) -> None:
        code = _CODES.get(status, "internal error" if status >= 500 else "invalid")
        self._send_json(status, {"code": code, "message": message})

    def _send_json(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self._send(status, [("Content-Type", "application/json; charset=utf-8")], body)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return None


def _upstream_message(headers: list[tuple[str, str]], payload: bytes) -> str:
    """The error text of a failed v1 request: its JSON ``error`` field, else the raw body."""
    text = payload.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return document["error"]
    return text or _header(headers, "X-Influxdb-Error") or "upstream write failed"
