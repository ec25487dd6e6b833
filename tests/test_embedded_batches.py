"""The embedded broker (Tansu 0.6, in memory) slows with the number of record batches it holds
(docs/RELIABILITY.md, "The embedded broker ages"): the paced producer of the demo sends in bursts, one
record batch per partition per burst instead of one per event."""

from __future__ import annotations

import asyncio

from stream_rec.io.kafka import publish
from stream_rec_devtools.batches import record_batches


def test_paced_publish_in_bursts_makes_a_batch_per_partition_per_burst(spine_settings):
    topic = spine_settings.topic(spine_settings.events_topic)
    events = [{"user_id": f"u{n % 8}", "item_id": str(n), "timestamp": 0} for n in range(120)]
    sent = asyncio.run(publish(spine_settings, topic, events, len(events), 400.0, True, progress=False,
                               burst_s=0.1))
    batches = asyncio.run(record_batches(spine_settings.broker, topic, spine_settings.partitions))
    assert sent == 120
    # 120 events at 400 ev/s: about 4 bursts of 40, one batch per partition each (7 measured); paced
    # without bursts, each event waits for the previous one's ack (about 40 batches measured). The bound
    # leaves room for a burst split by a loaded machine.
    assert 0 < sum(batches) <= 16, batches
