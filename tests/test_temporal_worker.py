"""The temporal replay's ``live_worker`` path: a real worker on the embedded broker streams the whole log,
and the lists it sent before the events after T are those of the offline pipeline (``live``)."""

from __future__ import annotations

import sys
from pathlib import Path

from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import PipelineConfig
from stream_rec_devtools.temporal import DAY, Scoreboard, replay
from stream_rec_devtools.temporal_systems import PipelineSystem, WorkerLists, warm_pipeline, worker_lists

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_temporal_systems import ITEMS, T0, tiny_log  # noqa: E402


def test_the_workers_lists_after_t_are_the_offline_pipelines(broker, tmp_path):
    model_dir = Recommender.untrained(ITEMS, device="cpu").save(tmp_path / "model")
    rec = Recommender.load(model_dir, device="cpu")
    log = tiny_log(n_users=10, events=12)
    t_split = T0 + 1.5 * DAY
    stop = log.index_at(t_split)
    worker = worker_lists(log, model_dir, rec, bootstrap=broker)
    assert worker["finished"] and worker["lists_received"] == len(log) and worker["unmatched_records"] == 0

    config = PipelineConfig()
    states, lists = warm_pipeline(rec, log, stop, config, progress=False)
    live = PipelineSystem(rec, config)
    live.start(states, lists)
    systems = {"live": live, "live_worker": WorkerLists(worker["lists"], log.sequences(stop))}
    board = Scoreboard(list(systems))
    stats = replay(log, stop, t_split, systems, board, set(log.items[:stop]), set(log.users[:stop]),
                   progress=False)
    assert stats.scored > 30
    # the same lists, up to float rounding of batched steps (the worker batches users differently)
    same = sum(a == b for a, b in zip(board.hit["live"], board.hit["live_worker"]))
    assert same >= 0.95 * stats.scored and sum(board.hit["live"]) > 0
    identical = [list(held.items) == worker["lists"][(user, len(log.sequences()[user]) - 1)]
                 for user, held in live.lists.items()]  # after each user's last event, item for item
    assert sum(identical) >= 0.9 * len(identical)
