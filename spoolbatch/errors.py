"""The one exception hierarchy of spoolbatch.

This module imports nothing from the package, so every other module can use it.
User-facing errors render as one line plus an optional hint. Each family carries its exit
status as the class attribute ``exit_code``, which the CLI's one error wrapper returns (the
README's exit-code table lists them).
"""

from __future__ import annotations


class SpoolbatchError(Exception):
    """Base of every error spoolbatch raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """One line for people, plus the hint on a second line if there is one."""
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(SpoolbatchError):
    """A configuration value (file, environment or flag) is invalid."""

    exit_code = 2


class SpoolError(SpoolbatchError):
    """The spool directory is missing, unreadable or inconsistent."""

    exit_code = 3


class SpoolFormatError(SpoolError):
    """The spool was laid out by a newer spoolbatch than this one (or its format file is unreadable)."""

    def __init__(self, message: str, *, found: int | None = None, supported: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.found = found
        self.supported = supported


class JobNotFound(SpoolbatchError):
    """A command named a job (or group) that the spool does not hold."""

    exit_code = 4

    def __init__(self, job: str) -> None:
        super().__init__(f"no job or group named {job!r} in the spool", hint="see `spoolbatch list`")
        self.job = job


class FileNotFound(SpoolbatchError):
    """An id named a file (an upload, or a batch's input, output or error file) that the spool does not hold."""

    exit_code = 4

    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file {file_id[:120]!r} in the spool")
        self.file_id = file_id


class InputError(SpoolbatchError):
    """A job file, or one line of it, is not a usable OpenAI batch input."""

    exit_code = 5

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None,
        code: str = "invalid_request", hint: str | None = None,
    ) -> None:
        where = path or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.path = path
        self.line = line
        self.code = code
        self.reason = message


class BadLines(InputError):
    """A job file has lines that fail validation: the first of them (bounded) and how many in all.

    ``lines`` holds ``(line number, code, message)``; ``render`` shows the first ``shown`` of them so
    a user fixes the file in one pass, and ``--json`` gives every one kept.
    """

    shown = 10

    def __init__(self, path: str, lines: list[tuple[int, str, str]], count: int, *, hint: str | None = None) -> None:
        first_line, first_code, first_message = lines[0] if lines else (None, "invalid_request", "bad line")
        super().__init__(first_message, path=path, line=first_line, code=first_code, hint=hint)
        self.summary = f"{path}: {count:,} bad line(s)"  # ``message`` stays the first line's, as InputError's
        self.lines = lines
        self.count = count

    def render(self) -> str:
        """The count, then one line per bad line (the first ``shown``), then the hint."""
        rows = [f"{self.summary}:"]
        rows += [f"  {self.path}:{n}: {message}" for n, _, message in self.lines[:self.shown]]
        if self.count > self.shown:
            rows.append(f"  ... and {self.count - self.shown:,} more (`submit --json` lists up to "
                        f"{max(len(self.lines), self.shown):,})")
        if self.hint:
            rows.append(f"  hint: {self.hint}")
        return "\n".join(rows)


class LimitExceeded(InputError):
    """A job file or the queue is over one of the configured limits."""

    def __init__(self, limit: str, value: int, maximum: int, *, path: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(
            f"over the {limit} limit ({value:,} > {maximum:,})", path=path,
            code="limit_exceeded", hint=hint,
        )
        self.limit = limit
        self.value = value
        self.maximum = maximum


class QuotaExceeded(LimitExceeded):
    """A project's queue is over one of its quotas (``[[projects]]`` in config.toml); the API answers 429."""

    def __init__(self, project: str, limit: str, value: int, maximum: int, *, path: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(limit, value, maximum, path=path, hint=hint)
        message = f"project {project!r} is over its {limit} quota ({value:,} > {maximum:,})"
        self.args = (f"{path}: {message}" if path else message,)
        self.message = self.args[0]
        self.reason = message
        self.code = "token_limit_exceeded" if "token" in limit else "quota_exceeded"  # OpenAI's code for tokens
        self.project = project


class EngineError(SpoolbatchError):
    """The inference engine could not be loaded or failed as a whole.

    Engines raise it with what they understood of the cause, so that nobody else parses
    their messages: ``out_of_memory`` (the GPU or host ran out of memory; a smaller batch
    may pass) and ``broken`` (the engine cannot be used again; close it and build a new one).
    """

    exit_code = 6

    def __init__(self, message: str, *, hint: str | None = None, out_of_memory: bool = False,
                 broken: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.out_of_memory = out_of_memory
        self.broken = broken


class RequestError(SpoolbatchError):
    """One request cannot be honoured by the engine; it goes to deadletter, the job goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DiskFull(SpoolbatchError):
    """A write failed with ENOSPC; the daemon waits for space and loses nothing."""

    exit_code = 7
