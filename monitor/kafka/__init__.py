"""Kafka without faust: the project's own broker and the clients and admin work around it.

``local`` starts a single-node KRaft broker or a 3-node cluster from the official jars on Maven
Central (cached in ``.kafka/``); ``admin`` creates the topics (co-partitioned inputs, compacted
registry and checkpoints, ``min.insync.replicas``); ``clients`` and ``security`` build
kafka-python configurations (TLS, SASL) from the settings; ``publisher`` is the HTTP intake's
producer; ``checkpoints`` writes and reads the chunked, compressed partition checkpoints;
``partitioning`` is Kafka's default partitioner on patient ids. It may import
:mod:`monitor.settings`, :mod:`monitor.errors` and kafka-python; never faust, the pipeline or the
stream worker.
"""
