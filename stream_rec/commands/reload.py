"""`stream-rec reload`: ask every running worker to hot-reload its model (a `control` topic record).

Publish {"type": "reload", "path"?: DIR} to the control topic. Every worker follows that topic and loads the
model without stopping: from DIR if given (a model directory, or a directory of them: the newest valid one),
else from its own --model. User states written by the old version are re-warmed from their stored history on
each user's next event. Workers also reload on their own when a newer model lands in their --model directory
(polled every STREAM_REC_MODEL_POLL_S seconds).
"""

from __future__ import annotations

import argparse

from ._common import add_broker_flags, add_command, settings_from_args

SUMMARY = "tell every worker to hot-reload its model (control topic)"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    add_broker_flags(p)
    p.add_argument("--path", metavar="DIR", help="model directory to load (default: each worker's --model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from pathlib import Path

    from ..io.kafka import ensure_topics, produce_json
    from ..io.topics import reload_message

    if args.path and not Path(args.path).exists():
        print(f"warning: {args.path} does not exist here (workers resolve the path on their own machines)")
    settings = settings_from_args(args)
    record = json.loads(reload_message(str(Path(args.path).resolve()) if args.path else None))

    async def send() -> None:
        await ensure_topics(settings)
        await produce_json(settings, settings.topic(settings.control_topic), [record])

    asyncio.run(send())
    print(f"sent {json.dumps(record)} to {settings.topic(settings.control_topic)}")
    return 0
