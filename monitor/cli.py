"""The ``coproduction-monitor`` command line: parse arguments, call the layers below, nothing else.

Exit codes: 0 success, 1 a failed check or run, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from monitor.errors import MonitorError


def _aware(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"timestamp needs a UTC offset (e.g. Z): {text!r}")
    return value


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _settings() -> Any:
    from monitor.settings import load_settings

    return load_settings()


# --- kafka -------------------------------------------------------------------------------------

def cmd_kafka(args: argparse.Namespace) -> int:
    from monitor.kafka import local

    s = _settings()
    if args.brokers > 1:
        return _kafka_cluster(args, s)
    broker = local.LocalBroker(s.local_kafka_home, port=s.local_kafka_port)
    if not s.uses_local_broker and args.action in {"up", "down"}:
        print(f"KAFKA_BOOTSTRAP_SERVERS={s.bootstrap_servers} is set: using that cluster, "
              "starting/stopping nothing")
        return 0
    if args.action == "up":
        st = local.up(broker)
        print(f"Kafka {st['version']} running on {st['bootstrap_servers']} (pid {st['pid']}); "
              f"log: {st['log']}")
        if args.topics:
            from monitor.kafka.admin import ensure_topics

            ensure_topics(s)
    elif args.action == "down":
        print("stopped" if local.down(broker) else "not running")
    else:
        st = local.status(broker)
        _print_json(st)
        return 0 if st["running"] else 1
    return 0


def _kafka_cluster(args: argparse.Namespace, s: Any) -> int:
    """``kafka up|down|status --brokers N``: a local KRaft cluster of N nodes (RF min(3, N),
    min.insync.replicas min(2, RF)), node i on port + 100 (i - 1), in ``<home>/cluster-N``."""
    from monitor.kafka import local

    cluster = local.LocalCluster(s.local_kafka_home / f"cluster-{args.brokers}", brokers=args.brokers,
                                 base_port=s.local_kafka_port, jars=s.local_kafka_home)
    if s.bootstrap_servers not in (None, cluster.bootstrap) and args.action in {"up", "down"}:
        print(f"KAFKA_BOOTSTRAP_SERVERS={s.bootstrap_servers} is set: using that cluster, "
              "starting/stopping nothing")
        return 0
    if args.action == "up":
        local.up_cluster(cluster)
        print(f"{args.brokers} Kafka nodes running (replication factor {cluster.replication_factor}, "
              f"min.insync.replicas {cluster.min_insync_replicas})")
        print(f"export KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap}")
        if args.topics:
            from monitor.kafka.admin import ensure_topics
            from monitor.settings import load_settings

            ensure_topics(load_settings(bootstrap_servers=cluster.bootstrap))
    elif args.action == "down":
        n = local.down_cluster(cluster)
        print(f"stopped {n} node(s)" if n else "not running")
    else:
        st = local.cluster_status(cluster)
        _print_json(st)
        return 0 if st["running"] else 1
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from monitor.kafka.admin import ensure_topics

    _print_json(ensure_topics(_settings()))
    return 0


# --- worker, simulator, demo ---------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    from monitor.stream.app import run_worker

    run_worker(_settings())
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    from monitor.notify import run_notifier

    settings = _settings()
    if not settings.alertmanager_url:
        print("MONITOR_ALERTMANAGER_URL is not set: the notifier has nowhere to deliver", file=sys.stderr)
        return 2
    run_notifier(settings)
    return 0


#: ``simulate``: some messages were not delivered (the broker did not acknowledge them)
EXIT_UNDELIVERED = 3


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from exc
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0: {text!r}")
    return value


def cmd_simulate(args: argparse.Namespace) -> int:
    from monitor.simulate import SimConfig, publish, write_ndjson

    cfg = SimConfig(patients=args.patients, days=args.days, seed=args.seed, end=args.end,
                    invalid_rate=args.invalid_rate)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            n = write_ndjson(cfg, fh)
        print(f"wrote {n} lines to {args.out}", file=sys.stderr)
        return 0
    result = publish(cfg, _settings(), speed=args.speed, progress=None,
                     delivery_timeout_s=args.delivery_timeout)
    _print_json(dict(result))  # messages the broker acknowledged, per document type
    if result.complete:
        return 0
    print(f"simulate: {result.loss_report()}", file=sys.stderr)
    return EXIT_UNDELIVERED


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    return run_demo(_settings(), patients=args.patients, days=args.days,
                    duration_s=args.duration, seed=args.seed)


# --- contract ------------------------------------------------------------------------------------

def cmd_schemas(args: argparse.Namespace) -> int:
    from monitor.contract.schema_export import export_schemas, render_schemas

    directory = Path(args.dir)
    if args.action == "export":
        for p in export_schemas(directory):
            print(p)
        return 0
    stale = [name for name, text in render_schemas().items()
             if not (directory / name).exists() or (directory / name).read_text() != text]
    if stale:
        print(f"schemas differ from the models: {stale}; run `coproduction-monitor schemas export`")
        return 1
    print("schemas are up to date")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from collections import Counter

    from monitor.kafka.clients import read_topic

    s = _settings()
    reasons: Counter[str] = Counter()
    latest: list[dict[str, Any]] = []
    for rec in read_topic(s, s.topics.name("dead_letters"), timeout_s=args.timeout):
        try:
            doc = json.loads(rec.value)
        except (TypeError, ValueError):
            reasons["<unreadable>"] += 1
            continue
        reasons[doc.get("reason", "<none>")] += 1
        latest.append(doc)
        latest = latest[-args.latest:] if args.latest else []
    _print_json({"counts": dict(reasons.most_common()), "latest": latest})
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """``alerts ack``: publish an acknowledgement; ``alerts history``: the episode's timeline."""
    from datetime import UTC

    from monitor.alerts.actions import AlertAction

    s = _settings()
    if args.action == "ack":
        from monitor.kafka.clients import producer

        action = AlertAction("ack", args.alert_id, datetime.now(UTC), by=args.by, note=args.note or "")
        prod = producer(s)
        try:
            prod.send(s.topics.name("alert_actions"), key=args.alert_id.encode(), value=action.dumps(),
                      partition=0).get(timeout=30)
        finally:
            prod.close()
        _print_json(action.to_json())
        return 0
    from monitor.kafka.history import timeline as history

    timeline = history(s, args.alert_id, timeout_s=args.timeout)
    if not timeline:
        print(f"no alert {args.alert_id} on the alerts topic", file=sys.stderr)
        return 1
    for entry in timeline:
        print(json.dumps(entry, separators=(",", ":")))
    return 0


# --- analysis ------------------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    from monitor.replay import replay

    with open(args.file, "rb") as fh:
        _print_json(replay(fh, as_of=args.as_of, progress=True, total=_line_count(args.file)))
    return 0


def _line_count(path: str) -> int:
    """Lines of a file (the progress bar's total), counted in 1 MiB blocks."""
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def cmd_equity(args: argparse.Namespace) -> int:
    from monitor import equity

    if args.level == "grouped":
        out = equity.grouped_from_csv(args.file, adverse=args.adverse, ordered=args.ordered,
                                      scale=args.scale, sii_method=args.sii_method)
    else:
        out = equity.individual_from_csv(args.file, value=args.value, weights=args.weights)
    _print_json(out)
    return 0


def cmd_carers(args: argparse.Namespace) -> int:
    if args.source:
        from monitor.carers.state import ledger_from_file

        sys.stdout.write(ledger_from_file(args.source, args.week, args.format))
        return 0
    import urllib.request

    s = _settings()
    if s.api_token is None:
        print("set MONITOR_API_TOKEN to read the live ledger, or use --from FILE", file=sys.stderr)
        return 2
    url = f"http://{s.web_host}:{s.web_port}/carers/ledger?week={args.week}&format={args.format}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {s.api_token.get_secret_value()}"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the operator's own worker
        sys.stdout.write(resp.read().decode())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from monitor.report import build_report, from_file

    if args.source != "live":
        print(from_file(args.source, args.out))
        return 0
    from monitor.kafka.clients import read_topic

    s = _settings()
    snapshot = None
    for rec in read_topic(s, s.topics.name("equity"), timeout_s=args.timeout):
        snapshot = json.loads(rec.value)  # the latest population snapshot wins
    if not snapshot:
        print(f"no population snapshot on {s.topics.name('equity')} yet (is a worker running?)",
              file=sys.stderr)
        return 1
    print(build_report(Path(args.out), equity_snapshot=snapshot))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from datetime import UTC

    from monitor.intake.formats import decode_file_lines

    received_at = args.received_at or datetime.now(UTC)
    for item in decode_file_lines(args.file, args.format, received_at, patient_id=args.patient):
        sys.stdout.write(json.dumps(item, separators=(",", ":"), default=str) + "\n")
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    """``credentials add`` (prints the token once), ``list`` (never tokens), ``revoke ID``."""
    import dataclasses
    from datetime import UTC

    from monitor.credentials import issue
    from monitor.kafka import credentials as topic
    from monitor.kafka.admin import ensure_topics

    s = _settings()
    ensure_topics(s)
    if args.action == "add":
        try:
            cred, token = issue(args.role, name=args.name or "", created_at=datetime.now(UTC),
                                patients=frozenset(args.patient or ()), carer_id=args.carer)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        topic.publish(s, cred)
        _print_json({**cred.listing(), "token": token, "note": "shown once: store it now"})
        return 0
    registry = topic.load(s, timeout_s=args.timeout)
    if args.action == "list":
        _print_json([c.listing() for c in sorted(registry.by_id.values(), key=lambda c: c.created_at)])
        return 0
    cred = registry.by_id.get(args.credential_id)
    if cred is None:
        print(f"no credential {args.credential_id}", file=sys.stderr)
        return 1
    topic.publish(s, dataclasses.replace(cred, revoked=True))
    _print_json({**cred.listing(), "revoked": True})
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from monitor.intake.openapi import openapi_document

    _print_json(openapi_document())
    return 0


def cmd_nightscout_site(args: argparse.Namespace) -> int:
    """Print a sites-file entry for a Nightscout site (the secret from stdin, never an argument:
    arguments end up in shell history and process lists)."""
    from monitor.intake.sites import SITE_NAME, secret_hash

    if not SITE_NAME.match(args.site):
        print("site: 1-64 letters, digits, _ . - (starting with a letter or digit)", file=sys.stderr)
        return 2
    secret = sys.stdin.readline().rstrip("\n")
    if len(secret) < 12:
        print("the site secret (on stdin) must be at least 12 characters, as Nightscout's", file=sys.stderr)
        return 2
    entry = {"patient_id": args.patient, "api_secret_sha256": secret_hash(secret)}
    _print_json({"sites": {args.site: entry}})
    return 0


def cmd_intake(args: argparse.Namespace) -> int:
    from monitor.intake.serve import run_intake

    s = _settings()
    run_intake(s, args.host or s.intake_host, args.port or s.intake_port)
    return 0


# --- parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from monitor.simulate import DELIVERY_TIMEOUT_S  # the standard library only: cheap

    p = argparse.ArgumentParser(
        prog="coproduction-monitor",
        description="Streaming monitor of care coproduced with patients and informal carers.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    k = sub.add_parser("kafka", help="run a local single-node KRaft Kafka broker from Maven jars")
    k.add_argument("action", choices=["up", "down", "status"])
    k.add_argument("--topics", action="store_true", help="with up: also create the monitor's topics")
    k.add_argument("--brokers", type=int, default=1, metavar="N",
                   help="a local cluster of N KRaft nodes (replication factor min(3, N), "
                        "min.insync.replicas min(2, RF)); node i on port + 100 (i - 1); give the same "
                        "N to up, down and status")
    k.set_defaults(func=cmd_kafka)

    t = sub.add_parser("topics", help="create the monitor's topics (idempotent)")
    t.set_defaults(func=cmd_topics)

    w = sub.add_parser("worker", help="run the faust stream worker (Ctrl-C to stop)")
    w.set_defaults(func=cmd_worker)

    n = sub.add_parser("notify", help="deliver the alerts topic to Alertmanager (MONITOR_ALERTMANAGER_URL), "
                                      "at least once; Ctrl-C to stop")
    n.set_defaults(func=cmd_notify)

    s = sub.add_parser(
        "simulate", help="publish a synthetic population with a social gradient",
        description="Publish a synthetic population with a social gradient and wait until the broker "
                    "acknowledged every message; prints the messages delivered per document type (JSON). "
                    f"Exit codes: 0 every message was delivered; {EXIT_UNDELIVERED} some were not "
                    "(stderr says how many, per type and reason); 1 another failure; 2 bad usage.",
    )
    s.add_argument("--patients", type=int, default=1000)
    s.add_argument("--days", type=int, default=14)
    s.add_argument("--speed", type=float, default=None,
                   help="simulated seconds per wall-clock second (default: as fast as possible)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--end", type=_aware, default=None,
                   help="end of the simulated period, ISO 8601 with offset (default: today 00:00 UTC)")
    s.add_argument("--invalid-rate", type=float, default=0.0,
                   help="share of patient-days that also emit one invalid message")
    s.add_argument("--out", help="write NDJSON to this file instead of publishing to Kafka")
    s.add_argument("--delivery-timeout", type=_positive_seconds, default=DELIVERY_TIMEOUT_S,
                   metavar="SECONDS",
                   help="give a message this long from its first send, retries included, to be "
                        "acknowledged; when one is not, publication stops and the run exits "
                        f"{EXIT_UNDELIVERED} (default: %(default)g)")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="broker (if needed), worker, simulator, summary; stops what it started")
    d.add_argument("--patients", type=int, default=1000)
    d.add_argument("--days", type=int, default=14)
    d.add_argument("--duration", type=float, default=20.0, help="wall-clock seconds of simulation")
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(func=cmd_demo)

    sc = sub.add_parser("schemas", help="JSON Schemas of the event contract")
    sc.add_argument("action", choices=["export", "check"])
    sc.add_argument("--dir", default="schemas")
    sc.set_defaults(func=cmd_schemas)

    dl = sub.add_parser("dead-letters", help="counts of dead letters per reason and the latest N")
    dl.add_argument("--latest", type=int, default=10)
    dl.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for more records")
    dl.set_defaults(func=cmd_dead_letters)

    al = sub.add_parser("alerts", help="acknowledge an alert, or print its timeline (who answered, when)")
    alsub = al.add_subparsers(dest="action", required=True)
    ack = alsub.add_parser("ack", help="take an alert on: the notifier silences it until it resolves")
    ack.add_argument("alert_id")
    ack.add_argument("--by", required=True, help="who acknowledges (a name or duty role)")
    ack.add_argument("--note", default="")
    hist = alsub.add_parser("history", help="every event and action of one alert, in publication order "
                                            "(one JSON line each)")
    hist.add_argument("alert_id")
    hist.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for more records")
    al.set_defaults(func=cmd_alerts)

    r = sub.add_parser("replay", help="run the aggregators offline over an NDJSON file")
    r.add_argument("file")
    r.add_argument("--as-of", type=_aware, default=None)
    r.set_defaults(func=cmd_replay)

    e = sub.add_parser("equity", help="inequality measures from a CSV file")
    esub = e.add_subparsers(dest="level", required=True, metavar="LEVEL")
    eg = esub.add_parser("grouped", help="HEAT group-level measures (subgroup,estimate,population)")
    eg.add_argument("file")
    eg.add_argument("--adverse", action="store_true", help="the indicator is adverse (lower is better)")
    eg.add_argument("--ordered", action="store_true", help="the dimension is ordered (column order)")
    eg.add_argument("--scale", type=float, default=100)
    eg.add_argument("--sii-method", choices=["logit", "linear"], default="logit")
    ei = esub.add_parser("individual", help="Gini, Theil, Atkinson, ... of individual values")
    ei.add_argument("file")
    ei.add_argument("--value", default="value")
    ei.add_argument("--weights", default=None)
    e.set_defaults(func=cmd_equity)

    ca = sub.add_parser("carers", help="the carers' side: the weekly compensation ledger")
    csub = ca.add_subparsers(dest="carers_command", required=True, metavar="COMMAND")
    cl = csub.add_parser("ledger", help="one row per carer for an ISO week (minutes, hours, overload)")
    cl.add_argument("--week", required=True, help="ISO week, e.g. 2026-W44")
    cl.add_argument("--from", dest="source", default=None,
                    help="an NDJSON events file (default: the live worker's state via its API)")
    cl.add_argument("--format", choices=["csv", "json"], default="csv")
    ca.set_defaults(func=cmd_carers)

    rp = sub.add_parser("report", help="equity report: HTML page with PNG charts")
    rp.add_argument("--out", type=Path, required=True, help="output directory")
    rp.add_argument("--from", dest="source", default="live",
                    help="an NDJSON events file, or 'live': "
                         "the latest snapshot on the equity topic (default)")
    rp.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for more records (live)")
    rp.set_defaults(func=cmd_report)

    dc = sub.add_parser("decode", help="decode a file of gateway output to canonical readings")
    dc.add_argument("--format", default="auto",
                    choices=["auto", "native", "fhir", "nightscout", "openmhealth"])
    dc.add_argument("--patient", default=None,
                    help="patient id for formats that carry none (Nightscout entries)")
    dc.add_argument("--received-at", type=_aware, default=None,
                    help="receive time for the time checks (default: now; for archived files)")
    dc.add_argument("file")
    dc.set_defaults(func=cmd_decode)

    cr = sub.add_parser("credentials", help="per-gateway and per-person tokens with a role and a scope")
    crsub = cr.add_subparsers(dest="action", required=True)
    add = crsub.add_parser("add", help="a new credential; its token is printed once")
    add.add_argument("--role", required=True, choices=["gateway", "carer_app", "coordinator", "clinician"])
    add.add_argument("--patient", action="append", help="a patient a gateway may write (repeat)")
    add.add_argument("--carer", help="the carer id a carer_app writes as")
    add.add_argument("--name", help="what the credential is for (a device, a person)")
    lst = crsub.add_parser("list", help="every credential (never the tokens)")
    rev = crsub.add_parser("revoke", help="revoke a credential (intakes refuse it within a fetch)")
    rev.add_argument("credential_id")
    for reader in (lst, rev):
        reader.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for more records")
    cr.set_defaults(func=cmd_credentials)

    oa = sub.add_parser("openapi", help="the HTTP intake's OpenAPI 3.1 description (JSON)")
    oa.set_defaults(func=cmd_openapi)

    ns = sub.add_parser("nightscout-site", help="a MONITOR_NIGHTSCOUT_SITES_FILE entry binding a Nightscout "
                                                "site to a patient (the site secret on stdin)")
    ns.add_argument("site")
    ns.add_argument("--patient", required=True)
    ns.set_defaults(func=cmd_nightscout_site)

    it = sub.add_parser("intake", help="HTTP intake for apps that cannot speak Kafka (bearer token)")
    it.add_argument("--host", default=None, help="default: MONITOR_INTAKE_HOST")
    it.add_argument("--port", type=int, default=None, help="default: MONITOR_INTAKE_PORT")
    it.set_defaults(func=cmd_intake)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except MonitorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
