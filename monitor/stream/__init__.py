"""The live driver: the faust worker that feeds the pipeline from Kafka, and the only package that
imports faust (and, below it, mode and aiokafka's consumer). ``app`` wires the faust application
(``create_app``, ``run_worker``); ``consumer`` hands whole fetches to one batch handler and
``faust_adapter`` holds every reliance on private faust, mode and aiokafka internals; ``partitions``
owns the per-partition state (assignment, restore, rebuild, revocation, checkpoint rounds, input
acknowledgement after the checkpoint) behind an injected acker, checkpoint store, log reader and
clock; ``publish`` and ``outputs`` send dead letters, flags and alerts (acknowledged by the broker
before the input that caused them) and post alerts to Alertmanager; ``merge`` is the single merge
point of the per-partition partial summaries; ``views`` and ``health`` serve the web endpoints.
``partitions``, ``publish``, ``outputs`` and ``merge`` do not import faust, so they are tested
without it. It may import every other ``monitor`` package it drives (``monitor.pipeline``,
``monitor.kafka``, ``monitor.metrics``, ``monitor.alerts``, ``monitor.carers``, ``monitor.core``,
``monitor.equity``, ``monitor.auth``, ``monitor.settings``); nothing in ``monitor`` imports it except
the command line (``monitor.cli``), lazily.
"""
