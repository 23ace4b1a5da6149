"""Python's logging, routed into spoolbatch's own logs with a level and a time on every line.

A library configures no logging; the front ends do, here. `run` routes every logger's records
into the daemon's log (``logs/daemon.log``, capped and rotated like the daemon's own lines:
store/logfile.py) and onto stderr; `serve` onto stderr, which is its log. When stderr is
systemd's journal (``JOURNAL_STREAM`` names it), each line starts with its syslog priority
(``<4>`` for a warning) so the journal records the level and ``journalctl -p warning`` finds it.

How much comes through: by default WARNING and up from libraries (vLLM's and Ray's INFO
chatter, uvicorn's access lines stay out) and INFO and up from spoolbatch's own loggers;
``verbose`` 1 lets libraries' INFO through and ours DEBUG; 2 and up, DEBUG from everything.
``warnings.warn`` (a library's deprecation notice) goes the same way, as ``py.warnings``.

vLLM configures a handler of its own on stdout unless ``VLLM_CONFIGURE_LOGGING=0``, which a
route sets (when the environment does not say otherwise) before vLLM is imported; a library
that sets up its own handler when it is imported (Ray does) is brought back into the route by
``adopt``, which `run` calls on every heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from spoolbatch.store.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES, append_line

OURS = "spoolbatch"
# Libraries that talk at INFO on every start or request, or set up their own handler.
CHATTY = ("vllm", "ray", "uvicorn", "uvicorn.access", "uvicorn.error")
# Loggers that may carry a handler of their library's own that keeps their records from the root.
SELF_CONFIGURED = ("vllm", "ray")


def levels(verbose: int) -> dict[str, int]:
    """Logger name ('' for the root) -> its level for this verbosity."""
    library = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    return {"": library, OURS: logging.INFO if verbose <= 0 else logging.DEBUG, **{name: library for name in CHATTY}}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (what systemd reads from a ``<N>`` line prefix)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


def stderr_is_journal() -> bool:
    """True when this process's stderr is systemd's journal: ``JOURNAL_STREAM`` (device:inode) names it.

    A child started from a service inherits the variable with its stderr elsewhere: the
    device and inode tell the two apart, as systemd's documentation asks.
    """
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return bool(stream) and stream == f"{st.st_dev}:{st.st_ino}"


class LogHandler(logging.Handler):
    """Each record as 'TIME LEVEL logger: message' and its traceback: to a capped log file, to stderr, or both."""

    def __init__(self, path: Path | None, *, stderr: bool, prefix: str = "", stamp_stderr: bool = True,
                 journal: bool | None = None, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        super().__init__()
        self.path = path
        self.stderr = stderr
        self.prefix = prefix  # before each stderr line: the daemon's 'spoolbatch[PID] daemon: '
        self.journal = stderr_is_journal() if journal is None else journal
        # The journal stamps each line itself; a terminal beside a log file that has the times may not need them.
        self.stamp_stderr = stamp_stderr and not self.journal
        self.max_bytes = max_bytes
        self.keep = keep

    @staticmethod
    def text(record: logging.LogRecord, *, stamp: bool) -> str:
        """The record's lines, without a final newline."""
        head = f"{record.levelname} {record.name}: {record.getMessage().rstrip()}"
        if stamp:
            head = time.strftime("%Y-%m-%dT%H:%M:%S ", time.localtime(record.created)) + head
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        parts = [head, record.exc_text or "", record.stack_info or ""]
        return "\n".join(p for p in parts if p)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record (a failing write is reported by logging's own handleError, never raised)."""
        try:
            if self.path is not None:
                data = (self.text(record, stamp=True) + "\n").encode(errors="backslashreplace")
                with contextlib.suppress(OSError):  # a log line is never worth losing a chunk over (a full disk)
                    append_line(self.path, data, max_bytes=self.max_bytes, keep=self.keep)
            if self.stderr:
                lines = self.text(record, stamp=self.stamp_stderr).splitlines()
                mark = f"<{syslog_priority(record.levelno)}>" if self.journal else ""
                # Through sys.stderr, so that `run`'s progress bars (rich redirects it) print it above themselves.
                sys.stderr.write("".join(f"{mark}{self.prefix}{line}\n" for line in lines))
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


class Route:
    """Python's logging sent to one ``LogHandler`` until ``close`` puts back what it changed."""

    def __init__(self, handler: LogHandler, verbose: int = 0) -> None:
        self.handler = handler
        self.verbose = verbose
        self._levels = {name: logging.getLogger(name or None).level for name in levels(verbose)}
        self._adopted: dict[str, tuple[list[logging.Handler], bool]] = {}
        self._env_set = "VLLM_CONFIGURE_LOGGING" not in os.environ
        if self._env_set:
            os.environ["VLLM_CONFIGURE_LOGGING"] = "0"  # vLLM's records reach the root instead of its stdout
        self._warnings_were_captured = _capturing()
        for name, level in levels(verbose).items():
            logging.getLogger(name or None).setLevel(level)
        logging.getLogger().addHandler(handler)
        logging.captureWarnings(True)
        self.adopt()

    def adopt(self) -> None:
        """Bring back into this route the loggers that their library gave a handler of its own (Ray
        on import, vLLM when ``VLLM_CONFIGURE_LOGGING`` was set before): their records reach the root again."""
        for name in SELF_CONFIGURED:
            logger = logging.getLogger(name)
            if name in self._adopted or (logger.propagate and not logger.handlers):
                continue
            self._adopted[name] = (list(logger.handlers), logger.propagate)
            for h in list(logger.handlers):
                logger.removeHandler(h)
            logger.propagate = True
            logger.setLevel(levels(self.verbose)[name])

    def close(self) -> None:
        """Remove the handler; give back the levels, handlers and settings the route changed."""
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        for name, (handlers, propagate) in self._adopted.items():
            logger = logging.getLogger(name)
            for h in handlers:
                logger.addHandler(h)
            logger.propagate = propagate
        self._adopted.clear()
        for name, level in self._levels.items():
            logging.getLogger(name or None).setLevel(level)
        if not self._warnings_were_captured:
            logging.captureWarnings(False)
        if self._env_set:
            os.environ.pop("VLLM_CONFIGURE_LOGGING", None)

    def __enter__(self) -> Route:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _capturing() -> bool:
    """Whether ``logging.captureWarnings(True)`` is in force now."""
    import warnings

    return getattr(warnings.showwarning, "__module__", "") == "logging"
