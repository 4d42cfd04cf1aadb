#!/usr/bin/env bash
# The whole suite in two processes: the unit tests (CPU-bound, no broker) beside the integration
# tests, which run one after another (they share the broker; the fault tests stop and start
# brokers and workers) and mostly wait on them. The unit tests' output follows the integration
# tests'. Exit code: 0 when both passed. Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
log=$(mktemp)
$py -m pytest -q tests/unit "$@" >"$log" 2>&1 &
unit=$!
$py -m pytest -q tests/integration "$@"
integration=$?
wait "$unit"
unit_rc=$?
echo "== unit tests (ran beside the integration tests)"
cat "$log"
rm -f "$log"
(( integration == 0 && unit_rc == 0 ))
