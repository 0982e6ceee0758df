"""Turn raw JSON messages into points. Pure: no I/O, no clock except the one passed in.

A message is one JSON object::

    {"series": "host1.cpu", "timestamp": "2024-05-01T12:00:00Z", "value": 0.42}
    {"series": "host1", "timestamp": 1714564800123, "values": {"cpu": 0.42, "mem": 0.7}}

The second is a multi-feature model's point; for a one-feature model it is a *row* of columns,
and `JsonDecoder.decode_row` makes it one point per column (series ``host1/cpu``,
``host1/mem``), as `replay` does with a file of several value columns.

Field names come from :class:`~streamlstm.config.DecoderSettings`. Values must fit a float32
(the per-series windows are float32); series names must be UTF-8 text without control
characters and must not end in a backslash (line protocol cannot store one there). Given a
``clock``, a timestamp must also lie within ``max_past_s`` before and ``max_future_s`` after
it (0: no bound); the daemon passes one, readers of history (training from Kafka) do not.
A message that cannot be decoded raises :class:`~streamlstm.errors.DecodeError` whose
``reason`` is one of :data:`REASONS`; callers count it, log it (see :class:`RateLimitedLog`)
and dead-letter it.
Timestamps follow :mod:`streamlstm.core.timestamps`, the rules the file readers use too
(:func:`parse_timestamp` stays importable from here).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from streamlstm.config import DecoderSettings
from streamlstm.core.records import MAX_VALUE, Point, column_series
from streamlstm.core.timestamps import BAD_TIMESTAMP, parse_timestamp
from streamlstm.core.timestamps import MAX_TIMESTAMP as MAX_TIMESTAMP
from streamlstm.core.timestamps import MIN_TIMESTAMP as MIN_TIMESTAMP
from streamlstm.errors import DecodeError

INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_VALUE = "bad_value"
BAD_SERIES = "bad_series"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
#: Every reason a message can be rejected for; stable labels for metrics and dead-letter headers.
REASONS = (INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, BAD_VALUE, BAD_TIMESTAMP, BAD_SERIES,
           TIMESTAMP_OUT_OF_RANGE)

MAX_SERIES_LENGTH = 256
# C0 and C1 control characters, DEL, and lone surrogates (not encodable as UTF-8).
_UNFIT_SERIES_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_DETAIL_CHARS = 80
#: The most columns one row may carry (each is a series of its own).
MAX_ROW_COLUMNS = 64
_JSON = json.JSONDecoder()
# Names already checked by `check_series` (a daemon sees the same few thousand over and over);
# cleared when full, so a flood of new names costs a check each, never unbounded memory.
_CHECKED_SERIES_MAX = 65_536


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _number(raw: object, name: str) -> float:
    if isinstance(raw, float):
        value = raw
    elif isinstance(raw, int) and not isinstance(raw, bool):
        try:
            value = float(raw)
        except OverflowError:
            raise DecodeError(BAD_VALUE, f"{name}: too large") from None
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            raise DecodeError(BAD_VALUE, f"{name}: not a number: {_show(raw)}") from None
    else:
        raise DecodeError(BAD_VALUE, f"{name}: not a number: {_show(raw)}")
    if not -math.inf < value < math.inf:
        raise DecodeError(BAD_VALUE, f"{name}: not finite: {_show(raw)}")
    if not -MAX_VALUE <= value <= MAX_VALUE:
        raise DecodeError(BAD_VALUE, f"{name}: beyond the float32 range: {_show(raw)}")
    return value


def check_series(series: str) -> str:
    """``series`` if it can name a series, else raise ``DecodeError("bad_series", ...)``.

    A name must be 1 to :data:`MAX_SERIES_LENGTH` characters of UTF-8 text without control
    characters, not ending in a backslash (which line protocol cannot store at the end of a
    tag value): so every accepted name is stored exactly, and distinct names stay distinct.
    """
    if not series:
        raise DecodeError(BAD_SERIES, "empty series name")
    if len(series) > MAX_SERIES_LENGTH:
        raise DecodeError(BAD_SERIES, f"longer than {MAX_SERIES_LENGTH} characters")
    unfit = _UNFIT_SERIES_CHARS.search(series)
    if unfit is not None:
        what = "a lone surrogate" if unfit.group() >= "\ud800" else "a control character"
        raise DecodeError(BAD_SERIES, f"contains {what} ({unfit.group()!a}) at "
                                      f"{unfit.start()}: {series!a:.{_DETAIL_CHARS}}")
    if series.endswith("\\"):
        raise DecodeError(BAD_SERIES, f"ends with a backslash: {_show(series)}")
    return series


class JsonDecoder:
    """Decodes one Kafka message (key, value) into a :class:`Point`.

    ``feature_names`` is the model's feature order. With one feature the message carries
    ``value`` (or a one-entry ``values`` object); with several it carries ``values`` with
    every name. When the message names no series, the Kafka key (UTF-8) is the series.
    ``clock`` (epoch seconds) turns on the timestamp window of ``settings`` (module docstring).
    """

    def __init__(self, settings: DecoderSettings | None = None,
                 feature_names: Sequence[str] = ("value",),
                 clock: Callable[[], float] | None = None) -> None:
        if not feature_names:
            raise ValueError("feature_names must name at least one feature")
        self.settings = settings if settings is not None else DecoderSettings()
        self.feature_names = tuple(feature_names)
        self._series_field = self.settings.series_field
        self._timestamp_field = self.settings.timestamp_field
        self._value_field = self.settings.value_field
        self._values_field = self.settings.values_field
        self._single = len(self.feature_names) == 1
        self._clock = clock
        self._checked_series: set[str] = set()

    def decode(self, key: bytes | None, value: bytes) -> Point:
        """Decode one message; raises :class:`DecodeError` with a stable ``reason``."""
        obj = self._object(value)
        return Point(self._series(obj, key), self._timestamp(obj), self._values(obj))

    def decode_row(self, key: bytes | None, value: bytes) -> tuple[str | None, list[Point]]:
        """Decode one message as ``(row, points)``: ``(None, [point])`` as `decode` gives
        it, or, for a one-feature model and a ``values`` object of several entries none named
        as its feature, the message's series and one point per entry (at most
        `MAX_ROW_COLUMNS`), each named by `column_series`."""
        obj = self._object(value)
        series, timestamp = self._series(obj, key), self._timestamp(obj)
        named = obj.get(self._values_field) if self._single else None
        if (type(named) is not dict or len(named) < 2 or self.feature_names[0] in named
                or obj.get(self._value_field) is not None):
            return None, [Point(series, timestamp, self._values(obj))]
        if len(named) > MAX_ROW_COLUMNS:
            raise DecodeError(BAD_VALUE, f"{self._values_field}: {len(named)} entries, at most "
                                         f"{MAX_ROW_COLUMNS} (each is a series of its own)")
        points = []
        for name, raw in named.items():
            where = f"{self._values_field}.{name}"
            column = column_series(series, name)
            try:
                self._check_series(column)
            except DecodeError as exc:
                raise DecodeError(BAD_SERIES, f"{where}: {exc.detail}") from None
            points.append(Point(column, timestamp, (_number(raw, where),)))
        return series, points

    @staticmethod
    def _object(value: bytes) -> dict[str, Any]:
        try:
            obj = _JSON.decode(value.decode("utf-8"))  # json.loads less its argument checks
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise DecodeError(INVALID_JSON, str(exc)[:_DETAIL_CHARS]) from None
        except AttributeError:
            raise DecodeError(INVALID_JSON, "message has no value") from None
        if type(obj) is not dict:
            raise DecodeError(NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def decode_many(self, messages: Iterable[tuple[bytes | None, bytes]]
                    ) -> Iterator[Point | DecodeError]:
        """Decode each ``(key, value)``, yielding the point or the error in its place."""
        decode = self.decode
        for key, value in messages:
            try:
                yield decode(key, value)
            except DecodeError as exc:
                yield exc

    def _series(self, obj: dict[str, Any], key: bytes | None) -> str:
        series = obj.get(self._series_field)
        if series is None:
            if not key:
                raise DecodeError(MISSING_FIELD, f"{self._series_field} (and no message key)")
            try:
                series = key.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(BAD_SERIES, "message key is not UTF-8") from None
        elif type(series) is not str:
            raise DecodeError(BAD_SERIES, f"expected a string, got {_show(series)}")
        return self._check_series(series)

    def _check_series(self, series: str) -> str:
        """`check_series`, once per name while the cache of checked names holds it."""
        checked = self._checked_series
        if series not in checked:
            if len(checked) >= _CHECKED_SERIES_MAX:
                checked.clear()
            checked.add(check_series(series))
        return series

    def _timestamp(self, obj: dict[str, Any]) -> float:
        raw = obj.get(self._timestamp_field)
        if raw is None:
            raise DecodeError(MISSING_FIELD, self._timestamp_field)
        seconds = parse_timestamp(raw)
        if self._clock is not None:
            now = self._clock()
            past = self.settings.max_past_s or math.inf  # 0: no bound
            future = self.settings.max_future_s or math.inf
            if not now - past <= seconds <= now + future:
                raise DecodeError(TIMESTAMP_OUT_OF_RANGE, f"{_show(raw)} is more than "
                                  f"{past:g}s before or {future:g}s after now")
        return seconds

    def _values(self, obj: dict[str, Any]) -> tuple[float, ...]:
        if self._single:
            raw = obj.get(self._value_field)
            if raw is not None:
                return (_number(raw, self._value_field),)
        named = obj.get(self._values_field)
        if named is None:
            wanted = self._value_field if self._single else self._values_field
            raise DecodeError(MISSING_FIELD, wanted)
        if type(named) is not dict:
            raise DecodeError(BAD_VALUE, f"{self._values_field}: expected an object")
        if self._single:
            name = self.feature_names[0]
            if name not in named:
                if len(named) != 1:
                    raise DecodeError(MISSING_FIELD, f"{self._values_field}.{name}")
                name = next(iter(named))
            return (_number(named[name], f"{self._values_field}.{name}"),)
        out = []
        for name in self.feature_names:
            raw = named.get(name)
            if raw is None:
                raise DecodeError(MISSING_FIELD, f"{self._values_field}.{name}")
            out.append(_number(raw, f"{self._values_field}.{name}"))
        return tuple(out)


class RateLimitedLog:
    """Logs at most one message per key per ``interval_s``, counting the ones it held back.

    ``clock`` returns seconds (monotonic); tests pass a fake one.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` as a warning unless ``key`` was logged within the interval.

        Returns whether it was logged.
        """
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._suppressed.pop(key, 0)
        if held:
            self.logger.warning(msg + " (%d more like it since the last message)", *args, held)
        else:
            self.logger.warning(msg, *args)
        return True
