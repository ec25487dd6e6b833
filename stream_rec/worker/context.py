"""What one worker carries, in one typed object: :class:`WorkerContext`.

``worker.app.build_app`` makes it once (the Faust app, the settings, the services, the state table and
the topic names) and passes it to what needs it: the batch handler, the tasks, the HTTP listener. Nothing
is added to the ``faust.App``.

One place cannot be handed the context: the consumer and its thread, which Faust builds itself from the
broker URL's transport class, giving them nothing but the app (``self.app``). Faust's own settings
(``app.conf``) take configuration values, not a worker's live objects, and a subclass of ``faust.App``
would have to override Faust's private transport factory. So :func:`bind` registers the context under
its app, and the consumer (worker/transport.py) looks it up with :func:`context_of`. The registry holds
contexts weakly: the app keeps its context alive (its agent and tasks use it), and a context is never
kept alive by the registry, so an app and its context are freed together.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import faust

from ..settings import Settings
from .services import WorkerServices
from .table import BatchedChangelogTable


@dataclass(frozen=True)
class WorkerContext:
    app: faust.App
    settings: Settings
    services: WorkerServices
    table: BatchedChangelogTable  # the user-state table (worker/table.py)
    events_topic: str  # names as on the broker (the topic prefix included)
    recommendations_topic: str
    dlq_topic: str


_BOUND: "weakref.WeakValueDictionary[int, WorkerContext]" = weakref.WeakValueDictionary()


def bind(context: WorkerContext) -> None:
    """Register ``context`` for its app (:func:`context_of`)."""
    _BOUND[id(context.app)] = context


def context_of(app: faust.App) -> WorkerContext:
    """The context bound to ``app`` (raises LookupError for an app that ``build_app`` did not build)."""
    context = _BOUND.get(id(app))
    if context is None or context.app is not app:
        raise LookupError(f"no WorkerContext bound to {app!r}: apps with the streamrec:// transport are built by "
                          "stream_rec.worker.app.build_app")
    return context
