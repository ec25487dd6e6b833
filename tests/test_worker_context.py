"""What the worker carries (worker/context.py) and how its Faust extensions are installed: the typed
WorkerContext instead of attributes on ``faust.App``, found by the consumer through its app, and the
``streamrec://`` transport registered when an app is built -- never by importing a module."""

from __future__ import annotations

import gc
import subprocess
import sys
import types

import pytest

from stream_rec.settings import Settings

NO_IMPORT_SIDE_EFFECT = """
import importlib, pkgutil, sys
import stream_rec.worker
from faust.transport import drivers
for info in pkgutil.iter_modules(stream_rec.worker.__path__):
    importlib.import_module("stream_rec.worker." + info.name)
registered = "streamrec" in drivers.TRANSPORTS.aliases
from stream_rec.settings import Settings
from stream_rec.worker.app import build_app
import types
build_app(Settings(data_dir=sys.argv[1], app_id="import-check"), services=types.SimpleNamespace())
print(registered, "streamrec" in drivers.TRANSPORTS.aliases)
"""


def test_importing_the_worker_registers_no_transport_building_an_app_does(tmp_path):
    done = subprocess.run([sys.executable, "-c", NO_IMPORT_SIDE_EFFECT, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True"]


def test_the_context_is_found_through_its_app(tmp_path):
    import faust

    from stream_rec.worker.app import build_app
    from stream_rec.worker.context import context_of

    ctx = build_app(Settings(data_dir=tmp_path, app_id="context-check"), services=types.SimpleNamespace())
    assert context_of(ctx.app) is ctx
    assert not any(hasattr(ctx.app, name) for name in ("services", "state_table", "fetch_max_wait_ms"))
    with pytest.raises(LookupError):
        context_of(faust.App("not-built-by-build-app"))


def test_the_registry_keeps_no_context_alive():
    """The app keeps its context (its agent and tasks use it); the registry alone does not."""
    from stream_rec.worker.context import WorkerContext, bind, context_of

    app = types.SimpleNamespace()
    ctx = WorkerContext(app=app, settings=Settings(), services=None, table=None, events_topic="e",
                        recommendations_topic="r", dlq_topic="d")
    bind(ctx)
    assert context_of(app) is ctx
    del ctx
    gc.collect()
    with pytest.raises(LookupError):
        context_of(app)
