"""The carers' side of coproduction: burden, a compensation ledger and who takes part.

Pure logic (no Kafka, no faust), fed the same validated contract documents as the support core,
with versioned snapshots, so a pipeline partition can keep it next to its support state:

* :mod:`monitor.carers.ledger` - minutes per carer per ISO week (UTC), activity mix, overload
  (>= 35 h/week) and ``carer_overload`` notifications; rows merge exactly across partitions;
* :mod:`monitor.carers.fragility` - per patient ``single_point_of_failure`` (one carer does
  >= 90 % of the last 28 days' care) and ``network_lost`` (last registered carer left within
  14 days);
* :mod:`monitor.carers.participation` - active carers per 100 patients and self-monitoring
  adherence by deprivation quintile and region with the HEAT measures, Gini of care minutes
  across carers; integer summaries that merge exactly;
* :mod:`monitor.carers.state` - :class:`CarersState` (all of it for one partition), the replay
  helpers and :func:`ledger_from_file` for the CLI.

It may import :mod:`monitor.contract`, :mod:`monitor.core` (time helpers, id hashing, the support
core's patient records and snapshot errors) and :mod:`monitor.errors`; never the pipeline, the
operators, the stream worker or Kafka (the pipeline's ``CarersOperator`` drives it).
"""

from monitor.carers._common import CarersInputError, parse_week, week_label
from monitor.carers.fragility import (
    NETWORK_LOST,
    PATIENT_FLAGS,
    SINGLE_POINT_OF_FAILURE,
    FragilityState,
)
from monitor.carers.ledger import (
    CARER_OVERLOAD,
    OVERLOAD_MINUTES,
    CarerLedger,
    CarerNotification,
    merge_rows,
    notification_id,
    notifications_from_rows,
    rows_from_json,
    to_csv,
    to_json,
    week_of,
)
from monitor.carers.participation import (
    GroupParticipation,
    ParticipationSummary,
    participation_measures,
    participation_summary,
)
from monitor.carers.state import (
    CarersConfig,
    CarersState,
    ledger_from_file,
    ledger_rows_from_lines,
    replay_carers,
    replay_carers_state,
)

__all__ = [
    "CARER_OVERLOAD",
    "NETWORK_LOST",
    "OVERLOAD_MINUTES",
    "PATIENT_FLAGS",
    "SINGLE_POINT_OF_FAILURE",
    "CarerLedger",
    "CarerNotification",
    "CarersConfig",
    "CarersInputError",
    "CarersState",
    "FragilityState",
    "GroupParticipation",
    "ParticipationSummary",
    "ledger_from_file",
    "ledger_rows_from_lines",
    "merge_rows",
    "notification_id",
    "notifications_from_rows",
    "parse_week",
    "participation_measures",
    "participation_summary",
    "replay_carers",
    "replay_carers_state",
    "rows_from_json",
    "to_csv",
    "to_json",
    "week_label",
    "week_of",
]
