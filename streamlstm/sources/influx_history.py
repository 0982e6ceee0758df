"""Training history from InfluxDB, read with InfluxQL over HTTP ``GET /query``.

The v1 query API is the one thing InfluxDB 1.x, 2.x (through its DBRP mapping: ``db`` names
the mapped database) and 3.x all answer, so this reader uses it and nothing else (no Flux).
Plain ``urllib``: no client library.

The query's result becomes a :class:`~streamlstm.sources.files.Table`:

* every InfluxDB series (measurement + tag set, e.g. from ``GROUP BY host``) is one training
  series, named like a line-protocol series key: ``cpu,host=a`` (tags sorted by key), or just
  ``cpu`` without tags;
* the selected columns after ``time`` are the features, in query order, or in the order of
  ``features`` (which must name exactly those columns);
* rows with a null in any feature (``fill(null)``, a field missing at that time) are dropped;
  a short gap is filled again when the windows are cut, as in the daemon.

Every failure (unreachable server, an HTTP error, an InfluxQL error in the JSON body, a
non-numeric column, no rows at all) raises :class:`InfluxQueryError` with one readable line.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamlstm.errors import SourceError
from streamlstm.sources.files import Table

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8086"
CHUNK_SIZE = 10_000
_DETAIL_CHARS = 300


class InfluxQueryError(SourceError):
    """Reading training history from InfluxDB failed (HTTP, InfluxQL or an unusable result)."""


@dataclass(frozen=True)
class InfluxHistoryQuery:
    """Where and what to read. ``token`` is ``user:password`` (HTTP basic auth, 1.x) or an
    API token (``Authorization: Token``, 2.x and 3.x); empty for no authentication."""

    url: str
    query: str
    database: str | None = None
    token: str = ""
    timeout_s: float = 60.0

    def describe(self) -> str:
        where = f"InfluxDB at {self.url}"
        return where + (f" (db {self.database!r})" if self.database else "")


def read_history(request: InfluxHistoryQuery,
                 features: Sequence[str] | None = None) -> Table:
    """Run the query and turn its series into a table (see the module docstring)."""
    documents = fetch(request)
    try:
        return table_from_results(documents, features)
    except InfluxQueryError as exc:
        raise InfluxQueryError(f"{request.describe()}: {exc} (query: {request.query})") from None


def auth_headers(token: str) -> dict[str, str]:
    """``user:password`` -> basic auth; anything else non-empty -> ``Token``; empty -> none."""
    if not token:
        return {}
    if ":" in token:
        return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode("ascii")}
    return {"Authorization": f"Token {token}"}


def fetch(request: InfluxHistoryQuery) -> list[dict[str, Any]]:
    """``GET /query`` (chunked) and return its JSON documents, checked for errors."""
    params = {"q": request.query, "epoch": "ns", "chunked": "true",
              "chunk_size": str(CHUNK_SIZE)}
    if request.database:
        params["db"] = request.database
    url = request.url.rstrip("/") + "/query?" + urllib.parse.urlencode(params)
    http_request = urllib.request.Request(
        url, headers={"Accept": "application/json", **auth_headers(request.token)})
    where = request.describe()
    try:
        with urllib.request.urlopen(http_request, timeout=request.timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc.read())
        raise InfluxQueryError(f"{where}: HTTP {exc.code} {exc.reason}: {detail} "
                               f"(query: {request.query})") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        raise InfluxQueryError(f"{where}: cannot query: {reason}") from exc
    try:
        documents = parse_documents(body.decode("utf-8"))
    except ValueError as exc:
        raise InfluxQueryError(f"{where}: /query did not answer JSON: {exc}") from exc
    for document in documents:
        error = document.get("error")
        if error:
            raise InfluxQueryError(f"{where}: InfluxQL error: {error} (query: {request.query})")
        for result in document.get("results") or []:
            if result.get("error"):
                raise InfluxQueryError(f"{where}: InfluxQL error in statement "
                                       f"{result.get('statement_id', 0)}: {result['error']} "
                                       f"(query: {request.query})")
    return documents


def parse_documents(text: str) -> list[dict[str, Any]]:
    """One JSON object (plain answer) or several in a row (``chunked=true``) -> a list."""
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        document, position = decoder.raw_decode(text, position)
        if not isinstance(document, dict):
            raise ValueError(f"expected a JSON object, got {type(document).__name__}")
        documents.append(document)
    if not documents:
        raise ValueError("empty body")
    return documents


def series_name(measurement: str, tags: Mapping[str, Any] | None) -> str:
    """``cpu`` + ``{"host": "a"}`` -> ``cpu,host=a`` (tags sorted by key)."""
    parts = [measurement]
    parts += [f"{key}={'' if value is None else value}"
              for key, value in sorted((tags or {}).items())]
    return ",".join(parts)


@dataclass
class _Series:
    columns: list[str]
    rows: list[list[Any]]


def table_from_results(documents: Iterable[Mapping[str, Any]],
                       features: Sequence[str] | None = None) -> Table:
    """InfluxQL JSON documents (already checked for errors) -> a table, one series per
    measurement + tag set. Chunks of the same series are joined in order."""
    merged: dict[str, _Series] = {}
    for document in documents:
        for result in document.get("results") or []:
            for entry in result.get("series") or []:
                name = series_name(str(entry.get("name", "")), entry.get("tags"))
                columns = [str(c) for c in entry.get("columns") or []]
                rows = entry.get("values") or []
                known = merged.get(name)
                if known is None:
                    merged[name] = _Series(columns, list(rows))
                elif known.columns != columns:
                    raise InfluxQueryError(f"series {name!r} comes with columns {columns} "
                                           f"and {known.columns}")
                else:
                    known.rows.extend(rows)
    if not any(s.rows for s in merged.values()):
        raise InfluxQueryError("the query returned no rows")
    feature_names = _feature_names(merged, features)
    names: list[str] = []
    stamps: list[np.ndarray] = []
    values: list[np.ndarray] = []
    dropped = 0
    for name, series in merged.items():
        if not series.rows:
            continue
        order = [series.columns.index(f) for f in feature_names]
        times = _timestamps([row[0] for row in series.rows], name)
        data = _numbers(series, order, feature_names, name)
        keep = np.isfinite(data).all(axis=1)
        dropped += int((~keep).sum())
        if not keep.any():
            continue
        names += [name] * int(keep.sum())
        stamps.append(times[keep])
        values.append(data[keep])
    if dropped:
        log.info("dropped %d rows with a null value", dropped)
    if not names:
        raise InfluxQueryError(f"the query returned no rows without nulls ({dropped} with)")
    return Table(names, np.concatenate(stamps), np.concatenate(values), feature_names)


def _feature_names(merged: Mapping[str, _Series], features: Sequence[str] | None) -> list[str]:
    with_rows = {name: s for name, s in merged.items() if s.rows}
    first_name, first = next(iter(with_rows.items()))
    if not first.columns or first.columns[0] != "time":
        raise InfluxQueryError(f"series {first_name!r}: expected 'time' as the first column, "
                               f"got {first.columns}")
    selected = first.columns[1:]
    for name, series in with_rows.items():
        if series.columns[1:] != selected:
            raise InfluxQueryError(f"series {name!r} has columns {series.columns[1:]}, "
                                   f"series {first_name!r} has {selected}")
    if not selected:
        raise InfluxQueryError("the query selects no fields")
    if len(set(selected)) != len(selected):
        raise InfluxQueryError(f"the query returns duplicate columns {selected}; "
                               f"name them with AS")
    if features:
        if sorted(features) != sorted(selected):
            raise InfluxQueryError(f"the query returns the fields {', '.join(selected)} but "
                                   f"--features names {', '.join(features)}")
        return list(features)
    return list(selected)


def _timestamps(raw: list[Any], series: str) -> np.ndarray:
    """``epoch=ns`` integers -> epoch seconds; RFC 3339 strings if a server ignored ``epoch``."""
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return np.asarray(raw, dtype=np.int64) / 1e9
    try:
        return np.asarray([str(t).rstrip("Z") for t in raw],
                          dtype="datetime64[ns]").astype(np.int64) / 1e9
    except ValueError as exc:
        raise InfluxQueryError(f"series {series!r}: unreadable time values: "
                               f"{str(exc)[:_DETAIL_CHARS]}") from None


def _numbers(series: _Series, order: list[int], feature_names: list[str],
             name: str) -> np.ndarray:
    """The feature columns as float64 ``[N, F]``; null becomes NaN (dropped by the caller)."""
    try:
        return np.array([[row[i] for i in order] for row in series.rows], dtype=np.float64)
    except (TypeError, ValueError, IndexError):
        pass
    for number, row in enumerate(series.rows):
        for feature, i in zip(feature_names, order, strict=True):
            value = row[i] if i < len(row) else None
            if value is not None and (isinstance(value, str)
                                      or not isinstance(value, int | float)):
                raise InfluxQueryError(
                    f"series {name!r}, row {number + 1}: column {feature!r} holds "
                    f"{value!r}, not a number (select numeric fields only; group by tags "
                    f"with GROUP BY instead of selecting them)")
    raise InfluxQueryError(f"series {name!r}: rows do not match the columns {series.columns}")


def _error_detail(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text[:_DETAIL_CHARS] or "(no body)"
    if isinstance(document, dict):
        for key in ("error", "message"):
            if document.get(key):
                return str(document[key])[:_DETAIL_CHARS]
    return text[:_DETAIL_CHARS]
