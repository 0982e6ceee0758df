"""Every query of a Grafana dashboard, made runnable outside Grafana.

Grafana does two things to a panel's query before it reaches the datasource: it picks the
datasource (the target's own, else the panel's, resolving ``${var}`` datasource variables), and
it replaces its variables and macros (``$timeFilter``, ``$__interval``, ``$__rate_interval``,
``/^$series$/`` ...). This module does both, so tests can run each query against a real
Prometheus or InfluxDB and check that it returns data::

    for q in panel_queries(json.loads(path.read_text())):
        text = substitute(q.query, t0_ns, t1_ns, "1m", {"series": ["a", "b"]}, kind=q.kind)

The time range is a parameter because replayed data keeps its own (old) timestamps.
Only raw queries are supported (InfluxQL ``rawQuery``, PromQL ``expr``); a query-builder target
raises :class:`DashboardQueryError`, so a dashboard cannot silently hold a query this helper
(and hence the tests) cannot check.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["influxql", "promql"]

#: Grafana datasource plugin id -> query language of its raw queries.
KINDS: dict[str, Kind] = {"influxdb": "influxql", "prometheus": "promql"}

#: The datasources that grafana/provisioning/datasources/streamlstm.yaml provisions.
KNOWN_DATASOURCES: dict[str, str] = {
    "streamlstm-influxdb": "influxdb",
    "streamlstm-prometheus": "prometheus",
}

# Datasources that carry no query of their own: Grafana's annotations, dashboard and mixed
# pseudo-datasources and server-side expressions.
_PSEUDO = {"grafana", "-- Grafana --", "-- Dashboard --", "-- Mixed --", "__expr__", "datasource"}


class DashboardQueryError(ValueError):
    """A dashboard or query this helper cannot turn into a runnable query."""


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel (or one query variable), with its resolved datasource."""

    panel_title: str
    datasource_uid: str
    kind: Kind
    query: str
    ref_id: str = "A"
    panel_id: int | None = None


# ------------------------------------------------------------------ walking the dashboard


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, depth first, including rows and the panels inside collapsed rows."""

    def walk(panels: Sequence[Any]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            if not isinstance(panel, dict):
                raise DashboardQueryError(f"a panel is not an object: {panel!r}")
            yield panel
            yield from walk(panel.get("panels") or [])

    yield from walk(dashboard.get("panels") or [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every visible query of every panel of ``dashboard`` (a parsed dashboard JSON)."""
    variables = _datasource_variables(dashboard)
    out: list[PanelQuery] = []
    for panel in iter_panels(dashboard):
        title = str(panel.get("title") or "")
        for target in panel.get("targets") or []:
            if target.get("hide"):
                continue
            ref = target.get("datasource") or panel.get("datasource")
            resolved = _resolve_datasource(ref, variables, title)
            if resolved is None:
                continue
            uid, plugin = resolved
            kind = KINDS.get(plugin)
            if kind is None:
                raise DashboardQueryError(
                    f"panel {title!r}: unsupported datasource type {plugin!r}")
            query = _target_query(kind, target, title)
            out.append(PanelQuery(title, uid, kind, query, str(target.get("refId", "A")),
                                  panel.get("id")))
    return out


def template_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """The queries behind the dashboard's query variables, as runnable queries.

    Grafana's ``label_values(expr, label)`` (not PromQL) becomes ``group by (label) (expr)``,
    which returns one series per value; ``label_values(label)`` becomes ``group by (label)
    ({label!=""})``. ``panel_title`` is ``"variable NAME"``.
    """
    variables = _datasource_variables(dashboard)
    out: list[PanelQuery] = []
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        name = f"variable {var.get('name')}"
        found = _query_kind(var.get("datasource"), variables, name)
        if found is None:
            continue
        uid, kind = found
        raw = var.get("query")
        if isinstance(raw, dict):
            raw = raw.get("query")
        if not isinstance(raw, str) or not raw.strip():
            raise DashboardQueryError(f"{name}: no query")
        query = _label_values_to_promql(raw) if kind == "promql" else raw
        out.append(PanelQuery(name, uid, kind, query, "variable", None))
    return out


def _query_kind(datasource: Any, variables: Mapping[str, Any],
                name: str) -> tuple[str, Kind] | None:
    """(uid, query kind) of a variable's or annotation's datasource; None for one skipped."""
    resolved = _resolve_datasource(datasource, variables, name)
    if resolved is None:
        return None
    uid, plugin = resolved
    kind = KINDS.get(plugin)
    if kind is None:
        raise DashboardQueryError(f"{name}: unsupported datasource type {plugin!r}")
    return uid, kind


def annotation_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """The queries of the dashboard's annotations (Grafana's built-in one has none).

    An InfluxDB annotation's InfluxQL is its ``query``, a Prometheus one's PromQL its ``expr``;
    ``panel_title`` is ``"annotation NAME"``. Disabled annotations are skipped.
    """
    variables = _datasource_variables(dashboard)
    out: list[PanelQuery] = []
    for note in (dashboard.get("annotations") or {}).get("list") or []:
        if note.get("builtIn") or not note.get("enable", True):
            continue
        name = f"annotation {note.get('name')}"
        found = _query_kind(note.get("datasource"), variables, name)
        if found is None:
            continue
        uid, kind = found
        query = note.get("expr") if kind == "promql" else note.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DashboardQueryError(f"{name}: no query")
        out.append(PanelQuery(name, uid, kind, query, "annotation", None))
    return out


def _datasource_variables(dashboard: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Datasource-type variables: name -> (uid, plugin id) of their current value."""
    found: dict[str, tuple[str, str]] = {}
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "datasource":
            continue
        current = (var.get("current") or {}).get("value")
        plugin = str(var.get("query") or "")
        if isinstance(current, str) and current:
            found[str(var["name"])] = (current, plugin)
    return found


def _resolve_datasource(ref: Any, variables: Mapping[str, tuple[str, str]],
                        where: str) -> tuple[str, str] | None:
    """(uid, plugin id) of a datasource reference; None for pseudo-datasources."""
    if ref is None:
        raise DashboardQueryError(f"{where}: no datasource (the default one is not checkable)")
    uid: str
    plugin: str | None = None
    if isinstance(ref, str):
        uid = ref
    elif isinstance(ref, dict):
        uid = str(ref.get("uid") or "")
        plugin = ref.get("type")
    else:
        raise DashboardQueryError(f"{where}: odd datasource reference {ref!r}")
    if uid in _PSEUDO or plugin in _PSEUDO:
        return None
    match = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if match:
        name = match.group(1)
        if name not in variables:
            raise DashboardQueryError(f"{where}: unknown datasource variable ${name}")
        uid, var_plugin = variables[name]
        plugin = plugin or var_plugin
    if not plugin:
        plugin = KNOWN_DATASOURCES.get(uid)
    if not uid or not plugin:
        raise DashboardQueryError(f"{where}: cannot tell the type of datasource {ref!r}")
    return uid, plugin


def _target_query(kind: Kind, target: Mapping[str, Any], title: str) -> str:
    if kind == "promql":
        expr = target.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            raise DashboardQueryError(f"panel {title!r} target {target.get('refId')}: no expr")
        return expr
    if not target.get("rawQuery"):
        raise DashboardQueryError(
            f"panel {title!r} target {target.get('refId')}: InfluxDB query-builder targets are "
            "not supported; use a raw InfluxQL query")
    query = target.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DashboardQueryError(f"panel {title!r} target {target.get('refId')}: no query")
    return query


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$",
                           re.DOTALL)


def _label_values_to_promql(query: str) -> str:
    match = _LABEL_VALUES.match(query)
    if not match:
        return query  # already PromQL (a query_result() or plain expression variable)
    label = match.group("label")
    expr = match.group("expr") or f'{{{label}!=""}}'
    return f"group by ({label}) ({expr})"


# ------------------------------------------------------------------ variables and macros

_DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 7 * 86_400_000, "y": 365 * 86_400_000}


def parse_duration_ms(text: str) -> int:
    """Milliseconds in a Prometheus/Grafana duration such as ``90s``, ``1m30s`` or ``2h``."""
    text = text.strip()
    if not text or _DURATION_PART.sub("", text):
        raise DashboardQueryError(f"not a duration: {text!r}")
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(text))


def format_duration(ms: int) -> str:
    """The shortest single-unit duration for ``ms`` (``60000`` -> ``1m``, ``61000`` -> ``61s``)."""
    if ms <= 0:
        raise DashboardQueryError(f"a duration must be positive, got {ms} ms")
    for unit, size in _DURATION_UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: 1 ms divides everything")  # pragma: no cover


_REGEX_META = set(r"\^$.|?*+()[]{}")


def _escape_regex(value: str, kind: Kind) -> str:
    """``value`` as a literal inside a regex of ``kind`` (as Grafana escapes multi-values)."""
    escaped = "".join("\\" + c if c in _REGEX_META else c for c in value)
    if kind == "influxql":
        return escaped.replace("/", r"\/")  # InfluxQL regexes are delimited by slashes
    # PromQL regexes live in double-quoted strings: each backslash must itself be escaped.
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def _format_value(value: str | Sequence[str], fmt: str | None, kind: Kind, name: str) -> str:
    if isinstance(value, str):
        values, raw_text = [value], value
    else:
        values, raw_text = [str(v) for v in value], None
        if not values:
            raise DashboardQueryError(f"variable ${name} has no values")
    if fmt in (None, "regex"):
        if raw_text is not None and fmt is None:
            return raw_text  # a plain string goes in as it is (e.g. an "All" value like .*)
        escaped = [_escape_regex(v, kind) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "raw":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    raise DashboardQueryError(f"unsupported variable format ${{{name}:{fmt}}}")


# ${name}, ${name:format}, [[name]], $name  (names are \w+; Grafana's own start with __)
_VARIABLE = re.compile(r"\$\{(?P<b>\w+)(?::(?P<fmt>[\w-]+))?\}|\[\[(?P<s>\w+)\]\]|\$(?P<p>\w+)")


def substitute(
    query: str,
    time_from_ns: int,
    time_to_ns: int,
    interval: str = "1m",
    variables: Mapping[str, str | Sequence[str]] | None = None,
    *,
    kind: Kind = "influxql",
    scrape_interval: str = "15s",
) -> str:
    """``query`` with Grafana's macros and ``variables`` replaced, ready for the datasource.

    * ``$timeFilter`` / ``$__timeFilter`` -> ``time >= FROMms and time <= TOms`` (as Grafana's
      InfluxDB datasource writes it); ``$__from`` / ``$__to`` -> epoch milliseconds;
      ``$__range`` / ``$__range_s`` / ``$__range_ms`` -> the range's length.
    * ``$__interval`` / ``$interval`` -> ``interval``; ``$__interval_ms`` -> in milliseconds;
      ``$__rate_interval`` -> ``max(interval + scrape_interval, 4 * scrape_interval)``, Grafana's
      rule with ``scrape_interval`` as the datasource's scrape interval.
    * user variables: ``$name``, ``${name}``, ``${name:format}``, ``[[name]]``. A value that is a
      sequence is formatted as Grafana formats a multi-value variable in a regex: values escaped
      for ``kind``'s regex syntax, ``(a|b)`` for several; a plain string goes in unchanged (use it
      for a custom "All" value such as ``.*``).

    A variable left without a value raises :class:`DashboardQueryError` naming it.
    """
    if time_to_ns < time_from_ns:
        raise DashboardQueryError("time_to_ns is before time_from_ns")
    from_ms = time_from_ns // 1_000_000
    to_ms = -(-time_to_ns // 1_000_000)
    interval_ms = parse_duration_ms(interval)
    scrape_ms = parse_duration_ms(scrape_interval)
    range_ms = max(to_ms - from_ms, 1)
    builtins = {
        "timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
        "__timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
        "__from": str(from_ms),
        "__to": str(to_ms),
        "__interval": format_duration(interval_ms),
        "interval": format_duration(interval_ms),
        "__interval_ms": str(interval_ms),
        "__rate_interval": format_duration(max(interval_ms + scrape_ms, 4 * scrape_ms)),
        "__rate_interval_ms": str(max(interval_ms + scrape_ms, 4 * scrape_ms)),
        "__range": format_duration(-(-range_ms // 1000) * 1000),
        "__range_s": str(-(-range_ms // 1000)),
        "__range_ms": str(range_ms),
    }
    values = dict(variables or {})
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("b") or match.group("s") or match.group("p")
        fmt = match.group("fmt")
        if name in builtins and name not in values:
            if fmt is not None:
                raise DashboardQueryError(f"unsupported format on ${{{name}:{fmt}}}")
            return builtins[name]
        if name in values:
            return _format_value(values[name], fmt, kind, name)
        missing.append(name)
        return match.group(0)

    result = _VARIABLE.sub(replace, query)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise DashboardQueryError(f"no value for variable(s) {names} in query: {query}")
    return result


def dashboard_variables(dashboard: Mapping[str, Any]) -> list[str]:
    """Names of the dashboard's templating variables (of any type)."""
    return [str(v["name"]) for v in (dashboard.get("templating") or {}).get("list") or []]
