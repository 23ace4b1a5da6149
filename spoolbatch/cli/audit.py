"""The CLI's lines of the audit trail: `submit`, `cancel`, `retry` and `gc` change the spool as the API's calls do.

SPEC: every change is a line of ``logs/audit.log``. The server writes one per API call that
changes something (server/audit.py); a command that changes the spool writes one too, with the
same fields: ``method`` ``CLI``, ``route`` the command (``spoolbatch submit``), ``id`` the job it
named or made, ``project``, ``status`` its exit code and ``outcome`` ``ok`` or the error's code,
and ``user``, the login that ran it, where the API has a key's fingerprint. A line that cannot be
written is logged, never raised: the command's own work is done by then.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
from collections.abc import Iterator
from dataclasses import dataclass

from spoolbatch.config import Config
from spoolbatch.errors import SpoolbatchError
from spoolbatch.store.audit import AuditEntry, AuditLog
from spoolbatch.store.spool import Spool


@dataclass
class Change:
    """What a command changed, filled in as it learns it."""

    id: str | None = None
    project: str | None = None


def _snake(name: str) -> str:
    """``JobNotFound`` -> ``job_not_found``: an error without a code of its own, named as codes are."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


@contextlib.contextmanager
def audited(cfg: Config, command: str, change: Change | None = None) -> Iterator[Change]:
    """Write the audit line of ``spoolbatch COMMAND`` when the block ends: ``ok``, or the error that ended it."""
    change = change or Change()
    status, outcome = 0, "ok"
    try:
        yield change
    except SpoolbatchError as exc:
        status, outcome = exc.exit_code, str(getattr(exc, "code", None) or _snake(type(exc).__name__))
        raise
    except KeyboardInterrupt:
        status, outcome = 130, "interrupted"  # the exit code the CLI's error wrapper gives it
        raise
    except BaseException as exc:  # a bug or an OS error: the command fails with a traceback, and the line says so
        status, outcome = 1, _snake(type(exc).__name__)
        raise
    finally:
        spool = Spool(cfg.spool)
        if spool.audit_log().parent.is_dir():  # not on a path that is no spool
            AuditLog(spool, max_bytes=cfg.log_max_bytes, keep=cfg.log_keep).write(AuditEntry(
                method="CLI", route=f"spoolbatch {command}", status=status, outcome=outcome,
                project=change.project, id=change.id, user=_user()))
