"""The stream processor: a Faust worker around :func:`stream_rec.pipeline.process_batch`.

Data flow: ``events`` -> agent ``process_events`` (micro-batches) -> table ``user-state`` (RocksDB, with a
changelog topic) -> ``recommendations`` (+ ``events-dlq`` for bad input). Tasks beside it keep the live
catalog of every worker up to date from the ``catalog`` topic, hot-reload the model, and (when
``drift_finetune`` is on) start a fine-tune on a drift alarm.

=================  ==================================================================================
module             what
=================  ==================================================================================
``app``            the Faust app: topics, the state table, the agent, the tasks (declarations only)
``context``        ``WorkerContext``: what one worker carries (settings, services, state table, topic names)
``batch``          the batch handler: records in, ``process_batch_isolating``, states staged, sends, metrics
``transport``      the ``streamrec://`` transport: the low-latency consumer, the eager hand-off, no commit
                   after a failed delivery (registered by ``build_app``, not at import)
``batching``       when a micro-batch closes (pure ``BatchPolicy``)
``intake``         ``take_batches``: micro-batches from the Faust stream, acked once handled
``sends``          record batches, the dead letters, the bound on batches in flight
``table``          the state table written behind its changelog (``BatchedChangelogTable``)
``observe``        what the worker reads of Faust's state: lag, unacked events, broker silence, recovery
``options``        the ``faust.App`` options
``internals``      every private name of Faust, aiokafka and mode used, with the versions checked
``follow``         the one follower of the ``catalog`` and ``control`` topics, each record contained
``watchdog``       stall detection (pure ``StallWatchdog``) and its gauges, WARNING and exit
``catalog``        the live catalog and the text vectors of new items and queries
``encoding``       the micro-batching queue in front of the text encoder
``models``         model resolution, hot reload (``LiveModel``), the ``control`` topic
``services``       ``WorkerServices`` (what the agent and tasks share), the state cache, the one read
                   (``read_user_state``) and the one write (``stage_user_states``) of users' states
``http``           the one HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``, ``/recommendations/{user_id}``
``listener``       its own thread and event loop, the snapshot of the stream it reads, the gate it waits at
``access``         who may ask the listener: the bearer-token middleware (every route but the probes')
``lookups``        lookups ranked in batches, within a bounded share of the time
``run``            ``make_worker``: the model to serve, thread and GC tuning, the ``faust.Worker``
``trace``          the latency microscope's worker side (``Settings.trace_file``; off by default)
=================  ==================================================================================

Design decisions
----------------
**Micro-batching with a RocksDB table written behind its changelog.** Faust's own table write
(``table[key] = value``) picks the store partition and the changelog partition from
``faust.streams.current_event()``, which is unset inside ``stream.take()`` batches, and it writes the local
store *before* the changelog record is delivered. We iterate ``intake.take_batches`` instead (an
adaptive variant of Faust's ``stream.take_events``: batches fill up while a backlog lasts; otherwise a
batch closes 1 ms after the intake pauses, or ``batch_max_wait_ms`` after its oldest event was taken,
``batching.BatchPolicy``), which yields the Faust ``Event`` objects, and write through
``table.BatchedChangelogTable``: each new state is *staged* for the partition of the user's own event
(events are keyed by ``user_id`` and the table is co-partitioned with ``events``, so that is the
partition of the user's table key), kept in memory, and written to RocksDB -- with the store's persisted
changelog offset -- only when its changelog record is delivered. A ``kill -9`` therefore never leaves a
local state the changelog lacks (tests/test_reliability_faults.py::test_kill9_during_bursts_*). Records
whose Kafka key is not their ``user_id`` are rejected (``key_mismatch``) because they would break the
co-partitioning; records on another partition than their key's murmur2 partition (a producer with
another partitioner) are re-sent there (``pipeline`` module docstring). ``take_batches`` acks the batch's
offsets only after our loop body *returned*, i.e. after states are staged and every recommendation/DLQ
record is handed to the producer; a body that raises acks nothing, and the agent's
``mode.CrashingSupervisor`` stops the worker for its supervisor to restart. tests/test_spine_kafka.py::
test_restart_recovers_state checks the result end to end: a worker restarted on the same data dir
continues each user's history, and one started on an *empty* data dir rebuilds the same states from the
changelog alone. (The embedded broker under-reports end offsets after batched produces, which would cut
that changelog replay short; ``transport.LowLatencyTransport`` confirms them with a fetch, see
``stream_rec.io.kafka.fetched_end_offsets``.)

**Deletion and pseudonyms.** ``delete_user`` control events (``stream-rec forget``) travel in ``events``
keyed by the user, so they are ordered with the user's own events; the tombstone is staged on that
event's partition, the user's changelog partition. ``forget`` sends one copy to every partition, so a
deletion also reaches what a producer with another partitioner put elsewhere. With
``Settings.pseudonymize_key`` the pipeline replaces user ids by their keyed hash right after validation
(``batch_records.validate_batch`` computes each event's pseudonym and partition once; the state is
read and written on the partition of the user's events).

**Delivery semantics: at-least-once delivery, effectively-once state.** A crash after sending
recommendations but before the offset commit redelivers events. Each state stores the (partition,
offset) of the last event applied to it; redelivered events (offset <= stored) are skipped and counted in
``stream_rec_events_duplicate_total``, so a user's GRU state and history never apply an event twice.
When all of a user's events in a batch are redelivered and the newest is the one the state applied
last, the user's list is sent again from the stored state (``stream_rec_recommendations_replayed_total``):
the state's changelog record may have been delivered before the crash while the recommendation was
not. A recommendation may be emitted twice for the same event (consumers key by user and keep the newest).
Once any record failed to be delivered, no offset is committed any more (``transport.LowLatencyConsumer``).

**Table.** RocksDB store (``store='rocksdb://'``, faust-streaming's rocksdict backend), keys are UTF-8
user ids and values our own binary codec (stream_rec/state.py, ``raw`` serializers: no pickle, no JSON
of floats). Data dir = ``Settings.table_dir`` (= data_dir/app_id: Faust's own path leaves the app id out,
so two apps sharing a data dir would mix offsets).

**Sends are batched.** ``await topic.send`` per record is slow (DEVELOPERS.md). A batch's
recommendations go into one Kafka record batch per partition (``sends.RecordBatches``, aiokafka's
``send_batch``: one future per partition, not per record), and so do its changelog records
(``table.BatchedChangelogTable``: same records on the same partitions as Faust's per-key
``send_soon``, staged by the batch handler and handed over before the batch is acked). The stream does
not wait for a batch's acknowledgements: up to ``max_in_flight_batches`` batches may be unacknowledged
(``sends.InFlightBatches``; a failed delivery is raised as soon as it is known). That keeps
at-least-once: Faust flushes the producer before it commits offsets, so a batch's offsets are never
committed before its records (and its changelog writes) are delivered.

**Low-latency fetches.** faust-streaming's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``: on a
quiet topic a fetch waits that long before returning, which becomes the event->recommendation latency
floor. ``transport.LowLatencyTransport`` (URL scheme ``streamrec://``) sets ``Settings.fetch_max_wait_ms``
on the consumer before it starts.

**Catalog per worker, not per partition.** Every worker needs the whole catalog to score, so the catalog
is not a group-consumed agent (that would give each worker only some partitions): a task in every worker
reads the compacted ``catalog`` topic from the beginning with its own group-less consumer
(``catalog.catalog_loop``, through ``follow.follow_records``: a record that is not an item, or that the
model cannot take, is skipped, logged and counted; the control topic is followed the same way).

**No silent stall.** Every Kafka request is bounded (``Settings.request_timeout_s``). The batch handler
and a 2 s timer feed ``watchdog.StallWatchdog``: no micro-batch for ``stall_warn_s`` while events wait (at
the broker or fetched and unhandled), a delivery is unanswered or the broker answers no fetch is a
``STALLED`` WARNING saying what the worker waits on and ``stream_rec_ready 0``; after ``stall_exit_s`` the
worker exits with status 75 for its supervisor to restart it.

**One listener.** Faust's own web server is disabled (it serves table contents and binds every interface);
the only listener is ours (``http``, on ``Settings.metrics_host``, localhost by default), run as a mode
service on the worker's event loop: metrics, health, readiness, and a user's current list computed from
the stored state by the stream's own ranking (``pipeline.current_record``). A lookup for a user of another
worker's partition is redirected there: Faust's assignor shares every member's ``canonical_url``
(``Settings.http_url``) with the group assignment.

**Model.** Until a trained model directory is given (``--model``), the worker runs
``Recommender.untrained`` over the catalog's ids (an ID-only HybridGRU with random weights: no text
vectors, so new items are known by id only) and says so in its logs, in ``model_version``
("untrained-...") and in the ``stream_rec_model_info{trained="false"}`` metric.
"""
