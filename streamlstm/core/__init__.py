"""The pure core: per-series state, windows, memory, calibration and the pipeline. No I/O.

Nothing here imports a Kafka, InfluxDB or Prometheus client (``tests/unit/test_core_imports.py``
checks every module of this folder); the adapters around it do.
"""
