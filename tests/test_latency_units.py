"""Unit tests of the latency work without Kafka: the micro-batch close policy, the bound on batches in
flight, the worker's trace records and the microscope's join of a trace with the bench's timings."""

from __future__ import annotations

import asyncio
import gc
import json
import types

import pytest

from stream_rec.worker.batching import BatchPolicy, Filling
from stream_rec.worker.intake import Batch
from stream_rec.worker.sends import InFlightBatches
from stream_rec.worker.trace import Tracer
from stream_rec_devtools.microscope import Trace, analyse, event_legs, format_report

POLICY = BatchPolicy(max_events=256, fill_max_s=0.050, max_wait_s=0.005, idle_close_s=0.001)


def reason(n=10, filling=0.002, idle=0.0, oldest=0.002, ready=0, behind=0, **kw):
    policy = BatchPolicy(**{**POLICY.__dict__, **kw})
    return policy.close_reason(Filling(n, filling_s=filling, idle_s=idle, oldest_wait_s=oldest, ready=ready),
                               lambda: behind)


def test_a_trickle_cannot_hold_a_batch_open_past_its_oldest_events_wait():
    # events keep arriving (never idle for 1 ms): the batch still closes once its oldest waited 5 ms,
    # long before the 50 ms fill bound that used to close such a batch
    assert reason(oldest=0.004) is None
    assert reason(oldest=0.005) == "max_wait"
    assert reason(oldest=0.005, max_wait_s=None) is None  # no latency bound: fills on
    assert reason(idle=0.001) == "idle"


def test_a_late_batch_first_takes_the_events_already_fetched():
    # its first event waited while the previous batch ran: the events that arrived meanwhile join it
    assert reason(oldest=0.008, ready=12) is None
    assert reason(oldest=0.008, ready=0) == "max_wait"
    assert reason(idle=0.002, ready=3) is None


def test_a_backlog_keeps_filling_the_batch_up_to_full_or_the_fill_bound():
    asked = []

    def behind():
        asked.append(1)
        return 5000

    assert POLICY.close_reason(Filling(10, filling_s=0.002, idle_s=0.0, oldest_wait_s=0.004), behind) is None
    assert not asked  # nothing late or idle: the consumer lag is not even looked at
    late_and_idle = Filling(10, filling_s=0.010, idle_s=0.002, oldest_wait_s=0.010)
    assert POLICY.close_reason(late_and_idle, behind) is None  # late and idle, but behind
    assert asked
    assert reason(n=256, behind=5000) == "full"
    assert reason(filling=0.050, behind=5000, ready=100) == "fill_max"
    assert reason(oldest=0.010, behind=255) == "max_wait"  # less than a batch waiting: latency wins


def test_a_filling_batch_is_looked_at_again_at_its_nearest_deadline():
    # 2 ms filling, idle 0.5 ms, oldest waited 4 ms: idle bound in 0.5 ms, max_wait in 1 ms, fill bound in 48 ms
    filling = Filling(10, filling_s=0.002, idle_s=0.0005, oldest_wait_s=0.004)
    assert POLICY.next_check_s(filling) == pytest.approx(0.0005)
    assert POLICY.next_check_s(Filling(10, filling_s=0.002, idle_s=0.0, oldest_wait_s=0.0047)) == pytest.approx(0.0003)
    assert POLICY.next_check_s(Filling(10, filling_s=0.002, idle_s=0.0, oldest_wait_s=0.004, ready=3)) == 0.0
    assert POLICY.next_check_s(Filling(10, filling_s=0.002, idle_s=0.002, oldest_wait_s=0.010)) == 0.001  # at most idle


def test_batch_is_a_list_that_says_why_it_closed():
    batch = Batch([1, 2, 3], "idle", 12.5)
    assert batch == [1, 2, 3] and len(batch) == 3
    assert (batch.closed_by, batch.closed_at) == ("idle", 12.5)


def test_in_flight_batches_are_bounded_and_failures_raise_oldest_first():
    async def main():
        loop = asyncio.get_running_loop()
        window = InFlightBatches(2)
        a, b, c = ([loop.create_future()] for _ in range(3))
        window.add(a)
        window.add(b)
        await asyncio.wait_for(window.settle(), 0.1)  # two unacknowledged: no wait
        assert len(window) == 2
        window.add(c)
        waiting = asyncio.ensure_future(window.settle())  # three: waits for the oldest
        await asyncio.sleep(0.01)
        assert not waiting.done()
        a[0].set_result(None)
        await asyncio.wait_for(waiting, 0.1)
        assert len(window) == 2 and window.pending() == b + c
        b[0].set_result(None)  # acknowledged batches are forgotten at the next settle
        await window.settle()
        assert window.pending() == c
        c[0].set_exception(RuntimeError("not delivered"))
        with pytest.raises(RuntimeError, match="not delivered"):
            await window.settle()
        window.add([])  # a batch without records is not tracked
        assert len(window) == 0

    asyncio.run(main())


def test_one_in_flight_batch_waits_for_the_previous_batch_like_before():
    async def main():
        loop = asyncio.get_running_loop()
        window = InFlightBatches(1)
        first, second = [loop.create_future()], [loop.create_future()]
        window.add(first)
        await window.settle()
        window.add(second)
        waiting = asyncio.ensure_future(window.settle())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        first[0].set_result(None)
        await asyncio.wait_for(waiting, 0.1)

    asyncio.run(main())


def _event(partition, offset, time_in):
    return types.SimpleNamespace(message=types.SimpleNamespace(partition=partition, offset=offset, time_in=time_in))


def test_tracer_records_batches_spans_and_gc_and_writes_json_lines(tmp_path):
    import time

    tracer = Tracer(tmp_path / "trace.jsonl", slow_s=0.0)
    tracer.install()
    try:
        async def main():
            loop = asyncio.get_running_loop()
            mono = time.monotonic()
            batch = Batch([_event(0, 7, mono - 0.002), _event(1, 3, mono - 0.001)], "max_wait", loop.time())
            trace = tracer.batch(batch)
            trace.mark("process")
            trace.mark("sent")
            future = loop.create_future()
            trace.deliveries([future])
            loop.call_soon(future.set_result, None)
            await asyncio.sleep(0.001)
            result = types.SimpleNamespace(recommendations=[{"user_id": "u", "event_timestamp": 5.0}],
                                           last_index={"u": 1}, phase_seconds={"step": 0.001})
            trace.finish(result)

        asyncio.run(main())
        gc.collect()
    finally:
        tracer.uninstall()
    tracer.write()
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    kinds = {r[0] for r in records}
    assert {"batch", "delivered", "span"} <= kinds
    batch = next(r for r in records if r[0] == "batch")
    assert batch[2] == "max_wait" and [e[:2] for e in batch[4]] == [[0, 7], [1, 3]]
    assert [m[0] for m in batch[5]] == ["start", "process", "sent", "end"]
    assert batch[7] == [["u", 5.0, 1]]
    assert any(r[0] == "span" and r[1] == "gc" for r in records)
    assert any(r[0] == "span" and r[1] == "callback" for r in records)


def _records(n_events=20):
    """A synthetic trace: event i sent at i ms, fetched 8 ms later, taken 1 ms later, ... ; event 19's batch
    waits 40 ms to close (the slow one) and a GC runs meanwhile."""
    out, timing = [], {}
    for i in range(n_events):
        sent = 100.0 + i / 1000
        fill = 0.040 if i == n_events - 1 else 0.002
        response, fetched, loop_t, taken = sent + 0.008, sent + 0.009, sent + 0.0095, sent + 0.010
        closed = taken + fill
        marks = [["start", closed, 0.0], ["queries", closed + 0.0001, 0.0], ["process", closed + 0.003, 0.002],
                 ["stage", closed + 0.0031, 0.002], ["changelog", closed + 0.0032, 0.002],
                 ["sent", closed + 0.004, 0.003], ["settled", closed + 0.004, 0.003], ["end", closed + 0.0041, 0.003]]
        out += [["response", response, [["ev", 0, i]]], ["fetch", fetched, loop_t, [["ev", 0, i, i]]],
                ["batch", i, "idle" if i < n_events - 1 else "fill_max", closed, [[0, i, taken]], marks,
                 [["step", 0.001], ["rank", 0.001]], [[f"u{i}", float(i), 0]]],
                ["delivered", i, closed + 0.007]]
        timing[(f"u{i}", float(i))] = (sent, closed + 0.012)
    out.append(["span", "gc", 100.030, 100.045, "MainThread", "gen2 collected 0", None])
    return out, timing


def test_microscope_joins_a_trace_with_the_bench_and_blames_the_slow_leg():
    records, timing = _records()
    trace = Trace.of(records, "ev")
    legs = event_legs(trace, ("u3", 3.0), *timing[("u3", 3.0)], acked=timing[("u3", 3.0)][0] + 0.003)
    assert legs["legs"]["fetch"] == pytest.approx(0.008)
    assert legs["legs"]["buffered"] == pytest.approx(0.001)
    assert legs["legs"]["fill"] == pytest.approx(0.002)
    assert legs["legs"]["process"] == pytest.approx(0.0029)
    assert legs["legs"]["worker"] == pytest.approx(0.005)
    assert legs["legs"]["ack"] == pytest.approx(0.003)
    assert legs["handling"] == (pytest.approx(0.004), pytest.approx(0.003))
    assert sum(legs["legs"][n] for n in ("fetch", "buffered", "handoff", "channel", "fill", "queries", "process",
                                         "stage", "changelog", "records", "delivery", "to_bench")) == \
        pytest.approx(legs["total"])
    assert event_legs(trace, ("nobody", 1.0), 0.0, 1.0) is None
    joined = {k: event_legs(trace, k, *t) for k, t in timing.items()}
    analysis = analyse(joined, trace)
    assert analysis["slow_events"] == 1 and analysis["dominant"] == {"fill": 1}
    assert analysis["closed_by"]["slow"] == {"fill_max": 1}
    assert analysis["activity"]["gc gen2"]["slow"]["share"] == 1.0
    assert analysis["activity"]["gc gen2"]["slow"]["ms"] > analysis["activity"]["gc gen2"]["all"]["ms"]
    assert "fill" in format_report(analysis)


def test_bench_table_gives_median_and_spread_and_checks_the_goals():
    from stream_rec_devtools.bench import format_table, summary_table

    def model(p99, worker_p99, sat):
        return {"pipeline": {"latency": {"p50_ms": 20.0, "p95_ms": 30.0, "p99_ms": p99,
                                         "legs": {"worker": {"p50_ms": 4.0, "p99_ms": worker_p99}}},
                             "saturation": {"events_per_s": sat}, "state": {"mean_bytes": 490.0}}}

    runs = [{"faust_floor": {"events_per_s": 4000.0}, "models": {"a": model(40.0, 8.0, 3800.0), "b": model(70.0, 9.0, 3000.0)}},
            {"faust_floor": {"events_per_s": 5000.0}, "models": {"a": model(60.0, 9.0, 4600.0), "b": model(55.0, 30.0, 3100.0)}},
            {"faust_floor": {"events_per_s": 4500.0}, "models": {"a": model(45.0, 7.0, 4200.0), "b": model(52.0, 9.5, 2900.0)}}]
    table = summary_table(runs)
    a, b = table["a"], table["b"]
    assert (a["p99_ms"]["median"], a["p99_ms"]["min"], a["p99_ms"]["max"]) == (45.0, 40.0, 60.0)
    assert a["over_faust_floor"]["median"] == pytest.approx(4200 / 4500)
    assert all(a["goals_met"].values())
    assert b["goals_met"] == {"p99_ms": False, "worker_p99_ms": True, "over_faust_floor": False,
                              "state_bytes_per_user": True}
    text = format_table(table, {"repeats": 3, "latency_rate": 1000.0, "events": 20000, "load_before": (1.0,),
                                "load_after": (1.5,)})
    assert "45.0 (40.0-60.0)" in text and "55.0* (52.0-70.0)" in text


def test_run_eagerly_finishes_what_does_not_wait_and_hands_over_the_rest():
    from stream_rec.worker.transport import run_eagerly

    async def quick(out):
        out.append(1)
        return "done"

    async def slow(future, out):
        out.append("before")
        value = await future
        out.append(value)
        await asyncio.sleep(0)
        return value * 2

    async def main():
        out = []
        assert run_eagerly(quick(out)) == (True, "done") and out == [1]
        future = asyncio.get_running_loop().create_future()
        done, rest = run_eagerly(slow(future, out))
        assert not done and out == [1, "before"]  # ran up to its first wait, in this task
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0.01)
        assert not task.done()
        future.set_result(21)
        assert await asyncio.wait_for(task, 1) == 42 and out[-1] == 21
        # cancelled while it waits: the coroutine sees CancelledError at its own await
        future2 = asyncio.get_running_loop().create_future()
        seen = []

        async def cancellable():
            try:
                await future2
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        _, rest = run_eagerly(cancellable())
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"] and future2.cancelled()
        with pytest.raises(ZeroDivisionError):  # errors of the eager part reach the caller

            async def boom():
                return 1 / 0

            run_eagerly(boom())

    asyncio.run(main())
