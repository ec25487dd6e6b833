"""Every private name of faust-streaming, aiokafka, mode-streaming and aiohttp that stream-rec uses, in
one list, with the versions it was checked against.

Each of these is a reason in the code next to it (the module named in ``where``); none is a public API,
so an upgrade may rename or remove any of them without notice. pyproject.toml pins the four packages to
the minor versions below, and tests/test_internals.py fails, naming the entry, when an installed version
lacks one (and when the code uses a private name of these packages that is not listed here). To upgrade:
raise the pins, run that test, fix what it names, run the suite, and update :data:`CHECKED_WITH`.

``kind``: ``override`` -- a method of theirs that our subclass overrides (gone, our override would
silently never run); ``method`` -- one we call or wrap; ``attribute`` -- an instance attribute we read or
set; ``class`` / ``global`` -- a module-level name we import, subclass or replace.
"""

from __future__ import annotations

from typing import NamedTuple

CHECKED_WITH = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1", "aiohttp": "3.14.5"}


class Private(NamedTuple):
    owner: str  # "module:Class" or "module"
    name: str
    kind: str  # override | method | attribute | class | global
    where: str  # our module, and what for


_FAUST_AIOKAFKA = "faust.transport.drivers.aiokafka"
_RECORDS = "aiokafka.record.default_records"

PRIVATE_NAMES: tuple[Private, ...] = (
    # --- faust-streaming ----------------------------------------------------------------------------
    Private(f"{_FAUST_AIOKAFKA}:AIOKafkaConsumerThread", "_create_worker_consumer", "override",
            "worker/transport.py: fetch_max_wait_ms, header keys contained"),
    Private(f"{_FAUST_AIOKAFKA}:AIOKafkaConsumerThread", "_highwaters", "override",
            "worker/transport.py: end offsets confirmed with a fetch"),
    Private(f"{_FAUST_AIOKAFKA}:AIOKafkaConsumerThread", "_fetch_records", "override",
            "worker/transport.py: the latency microscope's fetch times"),
    Private(f"{_FAUST_AIOKAFKA}:AIOKafkaConsumerThread", "_consumer", "attribute",
            "worker/transport.py: when the broker last answered a fetch"),
    Private(f"{_FAUST_AIOKAFKA}:Consumer", "_new_consumer_thread", "override",
            "worker/transport.py: our consumer thread"),
    Private(f"{_FAUST_AIOKAFKA}:Consumer", "_commit", "override",
            "worker/transport.py: no commit after a failed delivery"),
    Private(f"{_FAUST_AIOKAFKA}:Producer", "_ensure_producer", "method",
            "worker/sends.py, table.py, observe.py: the aiokafka producer under Faust's"),
    Private("faust.transport.consumer:Consumer", "_read_offset", "attribute",
            "worker/observe.py: the consumer lag; worker/transport.py: perform_seek keeps the seek's offsets"),
    Private("faust.transport.consumer:Consumer", "_gap", "attribute",
            "worker/transport.py: perform_seek forgets the gaps noted before the seek"),
    Private("faust.transport.consumer:Consumer", "_is_changelog_tp", "method",
            "worker/transport.py: perform_seek leaves the changelog partitions' offsets alone"),
    Private("faust.transport.consumer:Consumer", "_paused_partitions", "attribute",
            "worker/observe.py: the stall WARNING"),
    Private("faust.transport.consumer:ThreadDelegateConsumer", "_thread", "attribute",
            "worker/observe.py: the broker's silence"),
    Private("faust.streams:Stream", "_enable_passive", "method",
            "worker/intake.py: take_batches (as take_events)"),
    Private("faust.streams:Stream", "_processors", "attribute",
            "worker/intake.py: take_batches removes its processor"),
    Private("faust.stores.rocksdb:Store", "_db_for_partition", "method",
            "worker/table.py: a state read from its partition's store"),
    Private("faust.stores.rocksdb:Store", "_dbs", "attribute",
            "worker/table.py: delivered states written to their partition's store"),
    Private("faust.tables.base:Collection", "_sensor_on_set", "attribute",
            "worker/table.py: a staged write reported to Faust's sensors"),
    Private("faust.tables.base:Collection", "_sensor_on_del", "attribute",
            "worker/table.py: a staged delete reported to Faust's sensors"),
    # --- mode-streaming -----------------------------------------------------------------------------
    Private("mode.worker:Worker", "_install_signal_handlers_unix", "override",
            "worker/run.py: SIGHUP stops the worker as SIGTERM does"),
    Private("mode.worker:Worker", "_on_sigterm", "method", "worker/run.py: SIGHUP's handler"),
    # --- aiokafka -----------------------------------------------------------------------------------
    Private("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_max_wait_ms", "attribute",
            "worker/transport.py: set before start() builds the Fetcher"),
    Private("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetcher", "attribute",
            "worker/transport.py: the latency microscope"),
    Private("aiokafka.consumer.fetcher:Fetcher", "_proc_fetch_request", "method",
            "worker/transport.py: wrapped by the latency microscope"),
    Private("aiokafka.consumer.fetcher:Fetcher", "_records", "attribute",
            "worker/transport.py: the latency microscope"),
    Private("aiokafka.consumer.fetcher:FetchResult", "_partition_records", "attribute",
            "worker/transport.py: the latency microscope"),
    Private("aiokafka.producer.producer:AIOKafkaProducer", "_partition", "method",
            "worker/sends.py: a record's partition, as send() picks it"),
    Private("aiokafka.producer.producer:AIOKafkaProducer", "_message_accumulator", "attribute",
            "worker/observe.py: the stall WARNING"),
    Private("aiokafka.producer.message_accumulator:MessageAccumulator", "_batches", "attribute",
            "worker/observe.py: the stall WARNING"),
    Private("aiokafka.client:AIOKafkaClient", "_wait_on_metadata", "method",
            "worker/sends.py: a topic's partitions known before records are batched"),
    Private("aiokafka.consumer.fetcher", "MemoryRecords", "global",
            "io/records.py: replaced, so undecodable header keys cannot stop a fetch"),
    Private("aiokafka.record.memory_records", "_MemoryRecordsPy", "class", "io/records.py: subclassed"),
    Private("aiokafka.record.memory_records:_MemoryRecordsPy", "_next_slice", "attribute",
            "io/records.py: a batch's raw bytes"),
    Private(_RECORDS, "_DefaultRecordBatchPy", "class", "io/records.py: a batch read tolerantly"),
    Private(_RECORDS, "_DefaultRecordPy", "class", "io/records.py: the records it yields"),
    Private(f"{_RECORDS}:_DefaultRecordBatchPy", "_maybe_uncompress", "method", "io/records.py"),
    Private(f"{_RECORDS}:_DefaultRecordBatchPy", "_buffer", "attribute", "io/records.py"),
    Private(f"{_RECORDS}:_DefaultRecordBatchPy", "_pos", "attribute", "io/records.py"),
    Private(f"{_RECORDS}:_DefaultRecordBatchPy", "_num_records", "attribute", "io/records.py"),
    # --- aiohttp ------------------------------------------------------------------------------------
    Private("aiohttp.web_protocol:RequestHandler", "_manager", "attribute",
            "worker/listener.py: capped -- a connection's handler drops it when the connection ends"),
)
