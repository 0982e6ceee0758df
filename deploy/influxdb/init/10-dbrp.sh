#!/bin/bash
# Runs once, when the influxdb:2 container sets up an empty data volume
# (DOCKER_INFLUXDB_INIT_MODE=setup); the entrypoint has already created the org, the bucket and
# the admin token, configured the influx CLI, and exported DOCKER_INFLUXDB_INIT_BUCKET_ID.
#
# Maps the bucket to an InfluxQL database/retention policy of the same name (DBRP), so the
# dashboards and the Grafana alert rule, which query in InfluxQL through /query, can read it:
#   SELECT ... FROM "anomaly"   on database "streamlstm", retention policy "autogen".
set -euo pipefail

influx v1 dbrp create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${DOCKER_INFLUXDB_INIT_BUCKET}" \
  --rp autogen \
  --default

influx v1 dbrp list --org "${DOCKER_INFLUXDB_INIT_ORG}"
