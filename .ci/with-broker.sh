#!/usr/bin/env bash
# Run a command with a Kafka broker: KAFKA_BOOTSTRAP_SERVERS when set, otherwise the project's local
# broker (started here and stopped afterwards if this script started it). Exit code: the command's.
set -uo pipefail
CLI=".venv/bin/coproduction-monitor"
started=0
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! $CLI kafka status >/dev/null 2>&1; then
    $CLI kafka up || exit 1
    started=1
    export MONITOR_BROKER_STARTED=1  # nobody else uses it: the tests may clear old test topics
  fi
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${MONITOR_LOCAL_KAFKA_PORT:-9092}
  export MONITOR_BROKER_IS_LOCAL=1
fi
"$@"
rc=$?
if [[ $started == 1 ]]; then
  env -u KAFKA_BOOTSTRAP_SERVERS $CLI kafka down || true
fi
exit $rc
