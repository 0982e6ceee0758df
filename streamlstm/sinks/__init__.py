"""Where scores go: ``sinks.influx`` (InfluxDB, line protocol over /api/v2/write).

Nothing is imported here, so the core never pulls in a sink's client library by accident.
"""
