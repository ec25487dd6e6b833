"""The stream processor: a Faust worker around :func:`stream_rec.pipeline.process_batch`.

Data flow: ``events`` -> agent ``process_events`` (micro-batches) -> table ``user-state`` (RocksDB, with a
changelog topic) -> ``recommendations`` (+ ``events-dlq`` for bad input). Tasks beside it keep the live
catalog of every worker up to date from the ``catalog`` topic, hot-reload the model, and (when
``drift_finetune`` is on) start a fine-tune on a drift alarm.

=================  ==================================================================================
module             what
=================  ==================================================================================
``app``            the Faust app: topics, the state table, the agent, the tasks (declarations only)
``batch``          the batch handler: table reads/writes, ``process_batch``, sends, metrics
``faust_ext``      what we add to Faust/aiokafka: transport, ``take_batches``, batched sends and changelogs
``catalog``        the live catalog and the text vectors of new items and queries
``encoding``       the micro-batching queue in front of the text encoder
``models``         model resolution, hot reload (``LiveModel``), the ``control`` topic
``services``       ``WorkerServices`` (what the agent and tasks share) and the state cache
``http``           the one HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``, ``/recommendations/{user_id}``
``run``            ``make_worker``: the model to serve, thread and GC tuning, the ``faust.Worker``
=================  ==================================================================================

Design decisions
----------------
**Micro-batching with a RocksDB table and correct changelogs.** Writing a table from inside
``stream.take()`` fails: the table and the RocksDB store use ``faust.streams.current_event()`` (a
ContextVar holding a weakref to the event) to pick the store partition and the changelog partition, and
inside ``take()`` no event is current. We iterate ``faust_ext.take_batches`` instead (an adaptive variant
of Faust's ``stream.take_events``: batches fill up while a backlog lasts, close 1 ms after the intake
pauses), which yields the Faust ``Event`` objects, and for each user we set the current-event ContextVar
to *that user's own last event in the batch* around the table read and write (``faust_ext.event_context``).
Events are keyed by ``user_id`` and the table is co-partitioned with ``events`` (same key, same partition
count), so the user's event partition *is* the partition of the user's table key: the value lands in the
right RocksDB partition and the changelog record on the right changelog partition. Records whose Kafka key
is not their ``user_id`` are rejected (``key_mismatch``) because they would break that equality.
``take_batches`` acks the batch's offsets only after our loop body returns, i.e. after states are written
and every recommendation/DLQ record is handed to the producer. tests/test_spine_kafka.py::
test_restart_recovers_state checks the result end to end: a worker restarted on the same data dir
continues each user's history, and one started on an *empty* data dir rebuilds the same states from the
changelog alone. (The embedded broker under-reports end offsets after batched produces, which would cut
that changelog replay short; ``faust_ext.LowLatencyTransport`` confirms them with a fetch, see
``stream_rec.io.kafka.fetched_end_offsets``.)

**Deletion and pseudonyms.** ``delete_user`` control events (``stream-rec forget``) travel in ``events``
keyed by the user, so they are ordered with the user's own events; the key is deleted in that event's
context, so the tombstone lands on the user's changelog partition. With ``Settings.pseudonymize_key``
the pipeline replaces user ids by their keyed hash right after validation (table reads then search the
worker's local partitions, since the hash is not the record key; writes still use the event context).

**Delivery semantics: at-least-once delivery, effectively-once state.** A crash after sending
recommendations but before the offset commit redelivers events. Each state stores the (partition,
offset) of the last event applied to it; redelivered events (offset <= stored) are skipped and counted in
``stream_rec_events_duplicate_total``, so a user's GRU state and history never apply an event twice. A
recommendation may be emitted twice for the same event (consumers key by user and keep the newest).

**Table.** RocksDB store (``store='rocksdb://'``, faust-streaming's rocksdict backend), keys are UTF-8
user ids and values our own binary codec (stream_rec/state.py, ``raw`` serializers: no pickle, no JSON
of floats). Data dir = ``Settings.table_dir`` (= data_dir/app_id: Faust's own path leaves the app id out,
so two apps sharing a data dir would mix offsets).

**Sends are batched.** ``await topic.send`` per record is slow (DEVELOPERS.md). A batch's
recommendations go into one Kafka record batch per partition (``faust_ext.RecordBatches``, aiokafka's
``send_batch``: one future per partition, not per record), and so do its changelog records
(``faust_ext.BatchedChangelogTable``: same records on the same partitions as Faust's per-key
``send_soon``, queued by the table writes and handed over before the batch is acked). We await the
delivery futures together, one batch late (the stream does not stop for a broker round trip per batch).
That keeps at-least-once: Faust flushes the producer before it commits offsets, so a batch's offsets are
never committed before its records (and its changelog writes) are delivered.

**Low-latency fetches.** faust-streaming's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``: on a
quiet topic a fetch waits that long before returning, which becomes the event->recommendation latency
floor. ``faust_ext.LowLatencyTransport`` (URL scheme ``streamrec://``) sets ``Settings.fetch_max_wait_ms``
on the consumer before it starts.

**Catalog per worker, not per partition.** Every worker needs the whole catalog to score, so the catalog
is not a group-consumed agent (that would give each worker only some partitions): a task in every worker
reads the compacted ``catalog`` topic from the beginning with its own group-less consumer
(``catalog.catalog_loop``).

**One listener.** Faust's own web server is disabled (it serves table contents and binds every interface);
the only listener is ours (``http``, on ``Settings.metrics_host``, localhost by default), run as a mode
service on the worker's event loop: metrics, health, readiness, and a user's current list computed from
the stored state by the stream's own ranking (``pipeline.current_record``). A lookup for a user of another
worker's partition is redirected there: Faust's assignor shares every member's ``canonical_url``
(``Settings.http_url``) with the group assignment.

**Model.** Until a trained model directory is given (``--model``), the worker runs
``Recommender.untrained`` (same HybridGRU, random weights) and says so in its logs, in ``model_version``
("untrained-...") and in the ``stream_rec_model_info{trained="false"}`` metric.
"""
