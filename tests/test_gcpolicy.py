"""The daemon's collector policy: applied for a run, undone after it (the process is a test's or a library user's)."""

from __future__ import annotations

import gc
import signal

from spoolbatch.config import Config
from spoolbatch.worker import gcpolicy
from spoolbatch.worker.daemon import Daemon


def test_quiet_is_undone_and_nests() -> None:
    before = gc.get_threshold()
    outer = gcpolicy.quiet()
    inner = gcpolicy.quiet()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    inner()
    assert gcpolicy._active, "the outer policy still holds"
    gcpolicy.freeze_after_load()
    assert gc.get_freeze_count() > 0
    outer()
    assert gc.get_threshold() == before and not gcpolicy._active and gc.get_freeze_count() == 0
    gcpolicy.freeze_after_load()  # no policy: nothing is frozen
    assert gc.get_freeze_count() == 0


def test_a_daemon_run_puts_back_the_signal_handlers_and_the_collector(config: Config) -> None:
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    daemon = Daemon(config, echo=False)
    daemon.install_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) == daemon._on_signal
    assert daemon.run(once=True) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert gc.get_threshold() != gcpolicy.THRESHOLDS and not gcpolicy._active
