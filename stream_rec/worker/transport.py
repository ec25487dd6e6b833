"""The worker's Faust transport (URL scheme ``streamrec://``): faust-streaming's aiokafka transport with
its consumer changed where the worker needs it (each change says why; worker/__init__.py has the design).

* :class:`LowLatencyConsumerThread`: honours ``Settings.fetch_max_wait_ms`` (Faust hard-codes 1500 ms),
  confirms end offsets with a fetch (the embedded broker under-reports them), contains undecodable header
  keys, and says when the broker last answered a fetch (the stall watchdog);
* :class:`TracedConsumerThread`: the same, also recording fetch responses for the latency microscope;
* :class:`LowLatencyConsumer`: hands a fetched message to the stream eagerly (:func:`run_eagerly`), and
  commits nothing once a record failed to be delivered;
* :func:`register_transport`: makes ``streamrec://`` resolve to :class:`LowLatencyTransport`. Called by
  ``worker.app.build_app``; importing this module registers nothing.

Faust builds the consumer and its thread itself and gives them only the app (``self.app``): what they need
of the worker (settings, the tracer, the first delivery failure) they get from the worker's
:class:`~stream_rec.worker.context.WorkerContext`, through ``context.context_of(app)``. The private
names of Faust, aiokafka and mode used here are listed, with the versions checked, in worker/internals.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.transport import drivers as faust_drivers
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode.services import WaitResults

from ..io.kafka import fetched_end_offsets
from ..io.records import contain_header_keys
from .context import context_of

log = logging.getLogger(__name__)

SCHEME = "streamrec"  # broker URLs of the worker's app: streamrec://host:port (worker/options.py)


class LowLatencyConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        contain_header_keys()  # a non-UTF-8 header key must not crash the fetcher (stream_rec/io/records.py)
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher (Faust passes a fixed 1500 ms)
        consumer._fetch_max_wait_ms = context_of(self.app).settings.fetch_max_wait_ms
        return consumer

    async def _highwaters(self, partitions):
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        transport = self.transport
        conf = self.app.conf
        return await fetched_end_offsets(
            dict(listed), bootstrap_servers=aiokafka_driver.server_list(transport.url, transport.default_port),
            **aiokafka_driver.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))

    def fetch_answered_at(self) -> float | None:
        """When the broker last answered a fetch (empty or not) of any assigned partition, as wall-clock
        seconds, read from aiokafka's ``last_poll_timestamp`` (None: no answer yet, or no consumer)."""
        consumer = self._consumer
        if consumer is None:
            return None
        stamps = [consumer.last_poll_timestamp(tp) for tp in consumer.assignment()]
        stamps = [s for s in stamps if s is not None]
        return max(stamps) / 1000.0 if stamps else None


class TracedConsumerThread(LowLatencyConsumerThread):
    """The consumer thread when the worker traces (``Settings.trace_file``, worker/trace.py): when a fetch
    response reached aiokafka's fetcher, when its records were handed over to Faust in this thread, and
    when they reached the worker's event loop."""

    _fetched_at = 0.0
    _traced_fetcher = None  # the aiokafka Fetcher whose responses are recorded

    async def _fetch_records(self, consumer, *args, **kwargs):  # runs in the consumer thread
        fetcher = consumer._fetcher
        if self._traced_fetcher is not fetcher:
            self._traced_fetcher = fetcher
            self._trace_responses(fetcher, context_of(self.app).services.tracer)
        records = await super()._fetch_records(consumer, *args, **kwargs)
        if records:
            self._fetched_at = time.time()
        return records

    @staticmethod
    def _trace_responses(fetcher, tracer) -> None:
        """Wrap aiokafka's ``Fetcher._proc_fetch_request`` (one fetch request and its response)."""
        inner = fetcher._proc_fetch_request

        async def proc_fetch_request(assignment, node_id, request):
            before = dict(fetcher._records)
            result = await inner(assignment, node_id, request)
            tracer.response(time.time(), [(tp.topic, tp.partition, got._partition_records.next_fetch_offset)
                                          for tp, got in fetcher._records.items()
                                          if before.get(tp) is not got and got._partition_records is not None])
            return result

        fetcher._proc_fetch_request = proc_fetch_request

    async def getmany(self, active_partitions, timeout):  # runs on the worker's event loop
        records = await super().getmany(active_partitions, timeout)
        if records:
            context_of(self.app).services.tracer.fetch(self._fetched_at, time.time(), records)
        return records


# --- the eager hand-off ---------------------------------------------------------------------------------
def run_eagerly(coro) -> tuple[bool, Any]:
    """Run ``coro`` in the calling task until it returns -- ``(True, its value)`` -- or first has to wait:
    ``(False, a coroutine that finishes it)``, for a task to run (what Python 3.12's eager tasks do; this
    runs on 3.11). Exceptions of the eager part propagate to the caller."""
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _finish(coro, waiting)


async def _finish(coro, waiting):
    """The rest of a coroutine suspended on ``waiting`` (a future, or None for a bare yield), driven as a
    task drives it: wait, resume; when cancelled, cancel what it waits on and resume it (it sees the
    CancelledError at its own ``await``)."""
    while True:
        if waiting is not None:
            # asyncio's handshake between a future and the task awaiting it: the task resets this flag
            # when it takes the future over; we take it over here instead
            waiting._asyncio_future_blocking = False
            try:
                await asyncio.wait([waiting])
            except asyncio.CancelledError:
                waiting.cancel()
        else:
            await asyncio.sleep(0)
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _waits_on(coro, event) -> bool:
    """``coro`` is ``event.wait()`` (not started yet)."""
    frame = getattr(coro, "cr_frame", None)
    return frame is not None and frame.f_locals.get("self") is event


class LowLatencyConsumer(aiokafka_driver.Consumer):
    async def wait_first(self, *coros, timeout=None):
        # Faust's drain loop hands every fetched message to the streams with
        # ``wait_first(callback(message), self.suspend_flow.wait())``, and mode's ``wait_first`` starts four
        # tasks for it (the two coroutines, the service's stopped and crashed events): several event-loop
        # iterations and ~0.1 ms of the loop's time per message, where putting the message into the
        # stream's queue takes a few microseconds. The delivery is run eagerly instead: when it completes
        # without waiting (the queue had room, flow is not suspended), that is the result; when it has to
        # wait, the rest of it goes through ``wait_first`` exactly as before (a rebalance suspending the
        # flow still interrupts it).
        if len(coros) == 2 and timeout is None and _waits_on(coros[1], self.suspend_flow):
            done, value = run_eagerly(coros[0])
            if done:
                coros[1].close()
                return WaitResults([coros[0]], [value], False)
            coros = (value, coros[1])
        return await super().wait_first(*coros, timeout=timeout)

    _seeked: dict | None = None  # the stream partitions' read offsets set by the last perform_seek

    async def perform_seek(self) -> None:
        # Faust's recovery (``on_recovery_completed``, ``_resume_streams``) resumes fetching the stream
        # partitions, awaits this seek to the committed offsets, and only then resumes flow control, which
        # clears every stream's channel queue. With flow active (it is while changelogs are restored), the
        # events fetched during the seek's round trip went into those queues and were cleared unacked, and
        # the drain loop, part-way through a fetch from before the seek, saw its read offset reset to the
        # committed one, took its next record for a gap in the offsets (``_add_gap``) and then discarded the
        # re-fetched copies as read already; the next commit filled the gap: hundreds of events never
        # processed were committed (issue 23: a worker restarted after a stall exit, under load). So: no
        # record is handed over from here until flow resumes (each caller resumes it after the seek, or has
        # it stopped already), the partitions' gaps are forgotten (all from the committed offset is read
        # again), and ``resume_flow`` puts back the read offsets set here, whatever the drain loop wrote
        # while finishing the record it held.
        was_active = self.flow_active
        self.stop_flow()
        try:
            await super().perform_seek()
        except BaseException:
            if was_active:
                self.resume_flow()
            raise
        self._seeked = {tp: offset for tp, offset in self._read_offset.items() if not self._is_changelog_tp(tp)}
        for tp in self._seeked:
            self._gap.pop(tp, None)

    def resume_flow(self) -> None:
        seeked, self._seeked = self._seeked, None
        if seeked:
            self._read_offset.update(seeked)
        super().resume_flow()

    async def on_partitions_revoked(self, revoked) -> None:
        self._seeked = None  # a seek of an earlier assignment
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        self._seeked = None
        await super().on_partitions_assigned(assigned, generation_id)

    def _new_consumer_thread(self):
        traced = context_of(self.app).services.tracer is not None
        return (TracedConsumerThread if traced else LowLatencyConsumerThread)(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets) -> bool:
        # Faust flushes the producer right before this. Once any record of ours failed to be delivered, no
        # offset may be committed any more: the batch it belonged to may be acked already (delivery is
        # awaited one batch late), and committing would skip its events for good. The agent stops on the
        # same failure; a restarted worker is redelivered everything after the last good commit.
        failure = context_of(self.app).services.delivery_failure
        if failure is not None:
            log.error("not committing offsets: a record was not delivered (%r)", failure)
            return False
        return await super()._commit(offsets)


class LowLatencyTransport(aiokafka_driver.Transport):
    """faust-streaming's aiokafka transport whose consumer honours ``Settings.fetch_max_wait_ms`` and
    checks end offsets with a fetch (:func:`stream_rec.io.kafka.fetched_end_offsets`: the embedded broker's
    ListOffsets answer is too low after batched produces, which breaks table recovery)."""

    Consumer = LowLatencyConsumer


def register_transport() -> None:
    """Make Faust resolve ``streamrec://`` broker URLs to :class:`LowLatencyTransport` (idempotent; a
    process-wide table of Faust's, so it is done when a worker's app is built, not at import)."""
    faust_drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:LowLatencyTransport"
