"""streamlstm's detector as a river anomaly detector: one series, dict features, one at a time.

`StreamlstmDetector` follows `river.anomaly.base.AnomalyDetector` (``river.base``): ``learn_one(x)``
appends the point ``x`` to the series, ``score_one(x)`` returns the score in [0, 1] that ``x``
would get as the series' next point, without learning it. So it drops into river's tools::

    from river import anomaly
    from streamlstm.river_detector import StreamlstmDetector

    detector = anomaly.ThresholdFilter(StreamlstmDetector(), threshold=0.25)
    for x in stream:                      # {"value": 0.42} or {"value": .., "timestamp": ..}
        is_anomaly = detector.classify(detector.score_one(x))
        detector.learn_one(x)

It wraps the daemon's own `Pipeline` (every kind of evidence, the same calibration), for one
series: the scores are those `streamlstm replay` gives the same values. ``x`` holds the model's
features by name (a one-feature model takes any single number too) and, under ``timestamp``,
the event time in epoch seconds; without it the points are ``interval_s`` apart. A series scores
0 until its window is full and its calibration warm (``warmup`` windows). ``score_one`` then
``learn_one`` of the same point costs one pass of the model: the state ``score_one`` reached is
kept and ``learn_one`` takes it over.

The core (`streamlstm.core`) does not import river; this adapter does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from river import base

from streamlstm.core.calibration import AlarmPolicy
from streamlstm.core.pipeline import Pipeline, PipelineSettings
from streamlstm.core.records import Point
from streamlstm.core.snapshot import StateSnapshot
from streamlstm.model.artifact import load_artifact

BUNDLED_MODEL = Path(__file__).parent / "data" / "model"


class StreamlstmDetector(base.AnomalyDetector):
    """streamlstm's LSTM autoencoder, memory and calibration for one series, river-style.

    Parameters
    ----------
    model
        A model artifact directory (a version, or a models directory with ``current``);
        None: the bundled model.
    timestamp
        The key of ``x`` that holds the event time (epoch seconds); absent: ``interval_s``
        after the previous point.
    interval_s
        The spacing of points without a timestamp.
    threshold
        The alarm threshold (None: the model's own); `alarm` uses it.
    alarm_hold
        Windows the series stays quiet after an alarm (None: the model's own).
    warmup
        Windows scored before the series scores above 0 (None: the model's own).
    memory_windows
        Past windows remembered for novelty.
    season_s
        The period of the seasonal comparison (0: none).

    Attributes
    ----------
    alarm
        Whether the last point learnt raised an alarm (first point of an incident).

    """

    def __init__(self, model: str | None = None, timestamp: str = "timestamp",
                 interval_s: float = 60.0, threshold: float | None = None,
                 alarm_hold: int | None = None, warmup: int | None = None,
                 memory_windows: int = 2048, season_s: float = 86_400.0) -> None:
        self.model = model
        self.timestamp = timestamp
        self.interval_s = interval_s
        self.threshold = threshold
        self.alarm_hold = alarm_hold
        self.warmup = warmup
        self.memory_windows = memory_windows
        self.season_s = season_s
        self._build()

    _SERIES = "series"

    def _build(self) -> None:
        artifact = load_artifact(self.model if self.model is not None else BUNDLED_MODEL)
        self._features = list(artifact.feature_names)
        self._pipeline = Pipeline(
            artifact, PipelineSettings(max_series=1, memory_windows=self.memory_windows,
                                       season_s=self.season_s),
            alarms=AlarmPolicy(self.threshold, self.alarm_hold, self.warmup))
        self._last_ts: float | None = None
        self._pending: tuple[Point, StateSnapshot, bool] | None = None
        self.alarm = False

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline scoring the series."""
        return self._pipeline

    # ---- river's API ----

    def learn_one(self, x: dict[base.typing.FeatureName, Any]) -> None:
        point = self._point(x)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == point:
            self._pipeline.restore(pending[1])  # the state score_one reached with this point
            self.alarm = pending[2]
        else:
            result = self._pipeline.process([point], now=0.0)
            self.alarm = bool(result.scores and result.scores[0].is_anomaly)
        if self._last_ts is None or point.timestamp > self._last_ts:
            self._last_ts = point.timestamp

    def score_one(self, x: dict[base.typing.FeatureName, Any]) -> float:
        point = self._point(x)
        before = self._pipeline.snapshot([self._SERIES])
        result = self._pipeline.process([point], now=0.0)
        self._pending = (point, self._pipeline.snapshot([self._SERIES]),
                         bool(result.scores and result.scores[0].is_anomaly))
        if before.series:
            self._pipeline.restore(before)
        else:
            self._pipeline.forget([self._SERIES])
        return result.scores[0].score if result.scores else 0.0

    # ---- helpers ----

    def _point(self, x: dict[base.typing.FeatureName, Any]) -> Point:
        when = x.get(self.timestamp)
        if when is None:
            when = 0.0 if self._last_ts is None else self._last_ts + self.interval_s
        named = {k: v for k, v in x.items() if k != self.timestamp}
        if all(f in named for f in self._features):
            values = tuple(float(named[f]) for f in self._features)
        elif len(self._features) == 1 and len(named) == 1:
            values = (float(next(iter(named.values()))),)
        else:
            raise ValueError(f"x must hold the model's features {self._features} (and "
                             f"optionally {self.timestamp!r}), got {sorted(map(str, x))}")
        return Point(self._SERIES, float(when), values)

    # ---- pickling: the parameters and the series' state, not the torch module ----

    def __getstate__(self) -> dict[str, Any]:
        params = {name: getattr(self, name) for name in (
            "model", "timestamp", "interval_s", "threshold", "alarm_hold", "warmup",
            "memory_windows", "season_s")}
        snap = self._pipeline.snapshot()
        return {"params": params, "meta": snap.meta, "series": snap.series,
                "arrays": snap.arrays, "last_ts": self._last_ts, "alarm": self.alarm}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state["params"].items():
            setattr(self, name, value)
        self._build()
        if state["series"]:
            self._pipeline.restore(StateSnapshot(state["meta"], state["series"],
                                                 state["arrays"]))
        self._last_ts = state["last_ts"]
        self.alarm = state["alarm"]

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"memory_windows": 256}
        yield {"memory_windows": 256, "threshold": 0.4, "warmup": 50, "season_s": 0.0}
