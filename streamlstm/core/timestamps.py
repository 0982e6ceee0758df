"""The one set of timestamp rules, for a Kafka message value and for a file column alike.

A timestamp is RFC 3339 / ISO 8601 text (no offset means UTC) or a number of seconds,
milliseconds, microseconds or nanoseconds since the epoch, told apart by magnitude, as a
number or as numeric text. The result is float epoch seconds (UTC) between 1970 and 2262
(the store keeps int64 nanoseconds). :func:`parse_timestamp` is the rule for one value;
:func:`parse_timestamps` gives the same answers for a whole column, with numpy fast paths for
the common homogeneous columns and :func:`parse_timestamp` itself for everything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import numpy as np

from streamlstm.errors import DecodeError

#: The :class:`DecodeError` reason for a value that is not a usable time.
BAD_TIMESTAMP = "bad_timestamp"

# The store keeps int64 nanoseconds, which end on 2262-04-11; earlier than 1970 is refused too.
# Points are written in whole microseconds, so the last time allowed is the last microsecond
# whose nanoseconds fit in an int64 ((2**63 - 1) / 1e9 itself rounds up past it).
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 9_223_372_036.854775

#: Epoch numbers by magnitude: below each bound, the count of units per second; above the
#: last bound, nanoseconds.
EPOCH_UNITS: tuple[tuple[float, int], ...] = ((1e11, 1), (1e14, 1_000), (1e17, 1_000_000))
NANOSECONDS = 1_000_000_000

# Integers at least this large are not exact as float64; the column path hands them to the
# scalar rule, which divides them as Python integers (correctly rounded).
_EXACT_FLOAT_INTEGERS = float(2**53)

# ISO text that numpy's datetime64 parser reads exactly as datetime.fromisoformat does: a
# date, optionally a time to the minute or second with up to six fractional digits, and
# then optionally Z (dropped before numpy sees it); no other offset.
_NAIVE_OR_Z_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:(?P<time>[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?)[Zz]?)?",
    re.ASCII)

_DETAIL_CHARS = 80


class TimestampRowError(DecodeError):
    """One value of a column is not a usable time; ``index`` is its position (from 0)."""

    def __init__(self, index: int, value: object, error: DecodeError) -> None:
        super().__init__(error.reason, error.detail)
        self.index = index
        self.value = value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def format_timestamp(seconds: float, timespec: str = "auto") -> str:
    """Epoch seconds as RFC 3339 UTC text with a ``Z`` (``timespec`` as ``isoformat``'s)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec).replace(
        "+00:00", "Z")


def parse_timestamp(raw: object) -> float:
    """Epoch seconds (UTC) from RFC 3339 text or a number of s/ms/µs/ns since the epoch.

    Numbers (or numeric strings) are told apart by magnitude: below 1e11 they are seconds,
    below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds. Text without an
    offset is taken as UTC. Raises ``DecodeError("bad_timestamp", ...)``.
    """
    number: int | float
    if isinstance(raw, bool):
        raise DecodeError(BAD_TIMESTAMP, f"expected a time, got {_show(raw)}")
    if isinstance(raw, int | float):
        number = raw
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            number = int(text) if text.isdigit() else float(text)
        except ValueError:
            return _parse_rfc3339(raw, text)
    elif isinstance(raw, np.integer):
        number = int(raw)
    elif isinstance(raw, np.floating):
        number = float(raw)
    else:
        raise DecodeError(BAD_TIMESTAMP, f"expected a time, got {_show(raw)}")
    size = abs(number)
    if not size < math.inf:  # also catches NaN
        raise DecodeError(BAD_TIMESTAMP, f"not a finite number: {_show(raw)}")
    # int / int is correctly rounded, so nanosecond integers lose nothing before the float.
    per_second = NANOSECONDS
    for below, units in EPOCH_UNITS:
        if size < below:
            per_second = units
            break
    return _in_range(number / per_second, raw)


def _parse_rfc3339(raw: object, text: str) -> float:
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError(BAD_TIMESTAMP, f"not RFC 3339 or epoch time: {_show(raw)}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        seconds = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise DecodeError(BAD_TIMESTAMP, f"out of range: {_show(raw)}") from None
    return _in_range(seconds, raw)


def _in_range(seconds: float, raw: object) -> float:
    if not MIN_TIMESTAMP <= seconds <= MAX_TIMESTAMP:
        raise DecodeError(BAD_TIMESTAMP, f"outside 1970..2262: {_show(raw)}")
    return seconds


def parse_timestamps(raw: Sequence[object] | np.ndarray) -> np.ndarray:
    """:func:`parse_timestamp` for every value: float64 epoch seconds, one per value.

    Raises :class:`TimestampRowError` for the first value that is not a usable time.
    """
    values = raw.tolist() if isinstance(raw, np.ndarray) else list(raw)
    n = len(values)
    types = {type(x) for x in values}
    if n and types <= {str}:
        out, redo = _from_text(cast(list[str], values))
    elif n and types <= {int, float}:  # not bool: the scalar rule refuses it
        try:
            out, redo = _from_numbers(np.asarray(values, dtype=np.float64))
        except OverflowError:  # an integer beyond float64
            out, redo = np.empty(n), np.ones(n, dtype=bool)
    else:  # None, mixed types, numpy scalars...: value by value
        out, redo = np.empty(n), np.ones(n, dtype=bool)
    for i in np.flatnonzero(redo).tolist():
        try:
            out[i] = parse_timestamp(values[i])
        except DecodeError as exc:
            raise TimestampRowError(i, values[i], exc) from None
    return out


def _from_numbers(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers by the :data:`EPOCH_UNITS` rule, and which rows the scalar rule must do."""
    size = np.abs(numbers)
    per_second = np.select([size < below for below, _ in EPOCH_UNITS],
                           [float(units) for _, units in EPOCH_UNITS], float(NANOSECONDS))
    seconds = numbers / per_second
    # Out of range, not finite, or an integer too large for float64: the scalar rule decides
    # (and words the error).
    redo = ~((seconds >= MIN_TIMESTAMP) & (seconds <= MAX_TIMESTAMP) &
             (size < _EXACT_FLOAT_INTEGERS))
    return seconds, redo


def _from_text(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Numeric text as numbers; naive (or Z) ISO text through numpy; else the scalar rule."""
    n = len(values)
    text = [t.strip() for t in values]  # str.strip, exactly as the scalar rule does
    try:
        return _from_numbers(np.asarray(text, dtype=np.float64))
    except (TypeError, ValueError, OverflowError):
        pass
    # Rows numpy cannot be trusted with (offsets, odd forms) go to the scalar rule.
    other = np.zeros(n, dtype=bool)
    naive = []
    for i, t in enumerate(text):
        match = _NAIVE_OR_Z_ISO.fullmatch(t)
        if match is None:
            other[i] = True
            naive.append("1970-01-01")
        else:
            naive.append(match["date"] + (match["time"] or ""))
    try:
        micros = np.asarray(naive, dtype="datetime64[us]").astype(np.int64)
    except ValueError:  # e.g. 2014-02-30: the scalar rule names the row
        return np.empty(n), np.ones(n, dtype=bool)
    seconds = micros / 1e6
    redo = other | ~((seconds >= MIN_TIMESTAMP) & (seconds <= MAX_TIMESTAMP) &
                     (np.abs(micros) < 2**53))
    return seconds, redo
