"""The topic spec: every topic stream-rec uses, its partitions and cleanup policy, the state table's
changelog, and the format of the ``control`` topic's messages. The JSON Schemas of the record values
live in ``topics/`` at the repository root.
"""

from __future__ import annotations

import json
from typing import Any

from ..settings import Settings

STATE_TABLE = "user-state"  # the worker's Faust table; Faust names its changelog <app_id>-user-state-changelog

# Logical topic name -> (partitions from Settings?, compacted?)
TOPIC_LAYOUT = {
    "events": ("partitions", False),
    "catalog": ("one", True),
    "recommendations": ("partitions", False),
    "events-dlq": ("one", False),
    "control": ("one", False),
}


def topic_specs(settings: Settings) -> list[tuple[str, int, dict[str, str]]]:
    """(full name, partitions, config) of every stream-rec topic."""
    out = []
    for logical, (parts, compacted) in TOPIC_LAYOUT.items():
        name = {"events": settings.events_topic, "catalog": settings.catalog_topic,
                "recommendations": settings.recommendations_topic, "events-dlq": settings.dlq_topic,
                "control": settings.control_topic}[logical]
        n = settings.partitions if parts == "partitions" else 1
        config = {"cleanup.policy": "compact"} if compacted else {}
        out.append((settings.topic(name), n, config))
    return out


def changelog_topic(settings: Settings) -> str:
    """The state table's changelog topic (Faust's naming: ``<app_id>-<table>-changelog``)."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


# --- control topic -------------------------------------------------------------------------------------
def reload_message(path: str | None = None) -> bytes:
    """The ``control`` record that asks every worker to reload (from ``path``, or its ``--model``)."""
    msg: dict = {"type": "reload"}
    if path:
        msg["path"] = str(path)
    return json.dumps(msg).encode()


def reload_request(message: Any) -> str | None | bool:
    """Parse a ``control`` topic message. Returns the path to reload from (None = the ``--model``
    root) for ``{"type": "reload", "path"?: ...}``, or False for anything else."""
    if isinstance(message, (bytes, bytearray)):
        try:
            message = json.loads(message)
        except ValueError:
            return False
    if not isinstance(message, dict) or message.get("type") != "reload":
        return False
    path = message.get("path")
    return path if isinstance(path, str) and path else None
