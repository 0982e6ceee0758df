#!/bin/bash
# Run by the compose service influxdb-tokens once InfluxDB is up (INFLUX_HOST, INFLUX_TOKEN: the
# admin token, INFLUX_ORG, BUCKET). Creates, once per data volume:
#   /run/streamlstm-tokens/daemon/token    write-only on the bucket  (the daemon's writes)
#   /run/streamlstm-tokens/grafana/token   read-only on the bucket   (Grafana's InfluxQL reads)
# Each directory is a volume that only its consumer mounts. `docker compose down -v` resets all.
set -euo pipefail

bucket_id=$(influx bucket list --name "${BUCKET}" --hide-headers | awk 'NR == 1 {print $1}')
[ -n "${bucket_id}" ] || { echo "no bucket ${BUCKET}" >&2; exit 1; }

create() {  # create NAME FLAGS...: write a new token to /run/streamlstm-tokens/NAME/token
  local name=$1 file=/run/streamlstm-tokens/$1/token token
  shift
  if [ -s "${file}" ]; then
    echo "${name}: token already created"
    return
  fi
  token=$(influx auth create --description "streamlstm-${name}" "$@" --json \
          | sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p')
  [ -n "${token}" ] || { echo "${name}: no token in influx's answer" >&2; exit 1; }
  umask 077
  printf '%s' "${token}" > "${file}.tmp"
  chmod 0444 "${file}.tmp"  # the daemon (uid 10001) and Grafana (uid 472) read their own
  mv "${file}.tmp" "${file}"
  echo "${name}: token created"
}

create daemon --write-bucket "${bucket_id}"
create grafana --read-bucket "${bucket_id}" --read-dbrps
