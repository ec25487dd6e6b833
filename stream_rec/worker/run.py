"""Starting a worker: the model to serve, the process tuning, the ``faust.Worker``."""

from __future__ import annotations

import gc
import logging
import signal
from typing import Sequence

import faust

from ..logs import logging_config
from ..settings import Settings
from .app import build_app
from .catalog import seed_catalog, untrained_model, uses_text
from .http import HttpService, bind_listener
from .models import load_newest
from .services import WorkerServices

log = logging.getLogger(__name__)


def load_model(settings: Settings, items: Sequence[dict]):
    """The Recommender to serve: ``Settings.model`` if given (its newest loadable model directory), else
    untrained over ``items`` (None when there are no items yet: the first catalog records create it)."""
    if settings.model:
        model_dir, model = load_newest(settings.model, device=settings.device)  # skips broken model dirs
        log.info("serving trained model %s from %s on %s", model.version, model_dir, model.device)
        if items:
            seed_catalog(model, items, settings)
        return model
    if not items:
        return None
    return untrained_model(items, settings)


def limit_threads(n: int) -> None:
    """``n`` compute threads for torch and for numpy's BLAS. OpenBLAS starts a helper thread per core at
    import that spins after every BLAS call (the reasons' and re-ranking's matrix products), taking CPU
    from the broker and the event loop on a small box (DEVELOPERS.md)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


class Worker(faust.Worker):
    """``faust.Worker`` that also stops cleanly on SIGHUP (a closed terminal, a supervisor's hang-up), the
    way it stops on SIGTERM: agents stopped, offsets committed, producer flushed, RocksDB closed."""

    def _install_signal_handlers_unix(self) -> None:
        super()._install_signal_handlers_unix()
        self.loop.add_signal_handler(signal.SIGHUP, self._on_sigterm)


def make_worker(settings: Settings, items: Sequence[dict] = (), **worker_kwargs) -> Worker:
    """A :class:`Worker` for the app (run it with ``.execute_from_commandline()``), with the HTTP listener
    (worker/http.py) when ``metrics_port`` is set; its port is bound here, before anything is loaded."""
    listener = bind_listener(settings) if settings.metrics_port else None
    try:
        if settings.torch_threads > 0:
            limit_threads(settings.torch_threads)
        services = WorkerServices(settings, load_model(settings, items))
        if services.ui is not None:  # the pages' titles of the --items-file items (the catalog topic adds more)
            services.ui.items.add(items)
        if uses_text(services.model):
            # Load the LLM encoder before consuming: loading it on a thread while the stream runs holds the
            # GIL for seconds, stalling the first batches of a backlog.
            services.catalog_vectors.load_encoder()
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    if services.model is None:
        log.warning("no catalog yet (no --items-file, no --model): waiting for records on the %s topic",
                    settings.topic(settings.catalog_topic))
    ctx = build_app(settings, services)
    # Everything loaded so far (torch, transformers, the model, Faust) lives as long as the worker: move it
    # out of the cyclic GC's reach, or every full collection walks it all and stalls the stream
    # (DEVELOPERS.md has the measurement).
    gc.collect()
    gc.freeze()
    if services.tracer is not None:  # the latency microscope: GC, loop callbacks, executor threads
        services.tracer.install()
    # the HTTP service starts before the app (probes answer during start-up) and stops after it
    http = [HttpService(ctx, listener)] if listener is not None else []
    worker = Worker(ctx.app, *http, loglevel=settings.log_level,
                    logging_config=logging_config(settings.log_level, settings.log_format), **worker_kwargs)
    # Faust's terminal spinner sets the root logger to DEBUG (to show every record while it spins) when
    # the level is WARNING or above: every aiokafka send then builds a debug record. No spinner: the
    # level asked for is the level we get.
    worker.spinner = None
    return worker
