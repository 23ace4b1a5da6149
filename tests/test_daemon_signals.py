"""A stop signal never hangs the daemon: its handler takes no lock the main thread may hold."""

from __future__ import annotations

import signal
import threading

import orjson
import pytest

from spoolbatch.config import Config
from spoolbatch.worker.daemon import Daemon


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_while_the_main_thread_holds_the_heartbeat_lock_returns(config: Config, sig: int) -> None:
    # A handler runs in the main thread between its bytecodes: here, inside an update of the
    # heartbeat. The old handler updated the heartbeat itself and waited for that lock for good
    # (three idle daemons polling every 0.1 s hung on SIGTERM in a full run: tests/test_priority.py).
    daemon = Daemon(config, echo=False)
    done = threading.Event()

    def signal_inside_the_lock() -> None:
        with daemon.heartbeat._lock:
            daemon._on_signal(sig, None)
        done.set()

    runner = threading.Thread(target=signal_inside_the_lock, daemon=True)
    runner.start()
    runner.join(timeout=10)
    assert done.is_set(), "the signal handler waited for the heartbeat's lock"
    assert daemon.stopping
    daemon.heartbeat.update(state="idle")  # the loop goes on setting states until it sees the stop
    daemon.heartbeat.write()
    beat = orjson.loads(daemon.spool.worker_file(daemon.heartbeat.id).read_bytes())
    assert beat["state"] == "stopping"
    daemon.heartbeat.stop("stopped")
    beat = orjson.loads(daemon.spool.worker_file(daemon.heartbeat.id).read_bytes())
    assert beat["state"] == "stopped"


def test_a_stopped_run_says_stopped(config: Config) -> None:
    daemon = Daemon(config, echo=False)
    daemon.request_stop()
    assert daemon.run() == 0
    beat = orjson.loads(daemon.spool.worker_file(daemon.heartbeat.id).read_bytes())
    assert beat["state"] == "stopped"
