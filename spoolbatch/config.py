"""One typed configuration object, built from defaults, a config file, environment, flags.

Precedence, lowest first: the defaults below; ``SPOOL/config.toml`` (or the file named by
``SPOOLBATCH_CONFIG``); ``SPOOLBATCH_<FIELD>`` environment variables; command-line flags.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from spoolbatch.errors import ConfigError

DEFAULT_GPU_MODEL = "google/gemma-3-4b-it"
# The engines `--engine` may name; engines/ builds them (and imports this, not the other way round).
ENGINE_NAMES = ("vllm", "fake", "ray")
# Projects: the one a job, file or key has when nothing names another (plain inbox/, `api_keys`).
DEFAULT_PROJECT = "default"
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a folder of inbox/: no dot, never a path


def is_project_name(name: object) -> bool:
    """True when ``name`` may name a project (and its folder ``inbox/NAME/``)."""
    return isinstance(name, str) and PROJECT_NAME.fullmatch(name) is not None


def key_digest(key: str) -> bytes:
    """The sha256 of an API key: what is kept and compared, never the key."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One ``[[keys]]`` table (or an ``api_keys`` entry: an admin of ``default``): a key's sha256 and its project."""

    sha256: bytes
    project: str = DEFAULT_PROJECT
    admin: bool = False  # sees every project's batches and files, and may act for any project

    @property
    def fingerprint(self) -> str:
        """The first 8 hex digits of the key's sha256: what logs name it by."""
        return self.sha256.hex()[:8]


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """One ``[[projects]]`` table: a project whose inbox folder exists, and its quotas (None: only the spool's)."""

    name: str
    max_queued_jobs: int | None = None
    max_queued_requests: int | None = None
    max_queued_prompt_tokens: int | None = None  # estimated at submit (about 4 characters a token)


def _project(where: str, value: Any) -> str:
    if not is_project_name(value):
        raise ConfigError(f"{where}: project must be letters, digits, '-' or '_' (up to 64), got {value!r}")
    return str(value)


def _keys(raw: Any) -> tuple[ApiKey, ...]:
    if not isinstance(raw, list):
        raise ConfigError("setting 'keys' must be [[keys]] tables")
    out = []
    for i, table in enumerate(raw):
        where = f"[[keys]] #{i + 1}"
        if not isinstance(table, dict) or set(table) - {"key", "key_sha256", "project", "admin"} \
                or ("key" in table) == ("key_sha256" in table):
            raise ConfigError(f"{where}: give key or key_sha256 (not both), project, and optionally admin")
        if "key" in table:
            if not isinstance(table["key"], str) or not table["key"].strip():
                raise ConfigError(f"{where}: key must be a non-empty string")
            digest = key_digest(table["key"].strip())
        else:
            text = table["key_sha256"]
            if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
                raise ConfigError(f"{where}: key_sha256 must be 64 hex digits (sha256sum of the key)")
            digest = bytes.fromhex(text.strip())
        admin = table.get("admin", False)
        if not isinstance(admin, bool):
            raise ConfigError(f"{where}: admin must be true or false")
        out.append(ApiKey(digest, _project(where, table.get("project")), admin))
    return tuple(out)


def _projects(raw: Any) -> tuple[ProjectSettings, ...]:
    if not isinstance(raw, list):
        raise ConfigError("setting 'projects' must be [[projects]] tables")
    out: dict[str, ProjectSettings] = {}
    quotas = ("max_queued_jobs", "max_queued_requests", "max_queued_prompt_tokens")
    for i, table in enumerate(raw):
        where = f"[[projects]] #{i + 1}"
        if not isinstance(table, dict) or set(table) - {"name", *quotas}:
            raise ConfigError(f"{where}: give name and optionally {', '.join(quotas)}")
        name = _project(where, table.get("name"))
        for q in quotas:
            if q in table and (isinstance(table[q], bool) or not isinstance(table[q], int) or table[q] < 0):
                raise ConfigError(f"{where}: {q} must be a whole number, 0 or more")
        if name in out:
            raise ConfigError(f"{where}: project {name!r} is listed twice")
        out[name] = ProjectSettings(name, *(table.get(q) for q in quotas))
    return tuple(out.values())


@dataclass(frozen=True, slots=True)
class AdapterSource:
    """One ``[[adapters]]`` table: a LoRA adapter (``name`` and its PEFT folder), or, without
    ``name``, a folder whose sub-folders are adapters named after them; ``base`` is the model
    name jobs use for the model they adapt. ``engines.adapters`` lists what they hold."""

    path: str
    base: str
    name: str | None = None


def _adapters(raw: Any) -> tuple[AdapterSource, ...]:
    if not isinstance(raw, list):
        raise ConfigError("setting 'adapters' must be [[adapters]] tables")
    out = []
    for i, table in enumerate(raw):
        where = f"[[adapters]] #{i + 1}"
        if not isinstance(table, dict) or set(table) - {"name", "path", "base"}:
            raise ConfigError(f"{where}: give path, base and (for one adapter, not a folder of them) name")
        for key in ("path", "base", "name"):
            value = table.get(key)
            if (key != "name" or value is not None) and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{where}: {key} must be a non-empty string")
        name = table.get("name")
        if name is not None and name == table["base"]:
            raise ConfigError(f"{where}: name {name!r} is its base model's name; give the adapter a name of its own")
        out.append(AdapterSource(path=table["path"], base=table["base"], name=name))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What the vLLM engine is built with; defaults are the README's (vLLM takes 0.85 of the card's memory)."""

    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    dtype: str = "auto"
    cpu_kvcache_gib: int = 1
    model_dir: str | None = None
    tool_call_parser: str | None = None  # vLLM's --tool-call-parser name, for tool_choice "auto"
    reasoning_parser: str | None = None  # vLLM's --reasoning-parser name: reasoning split from content
    media_dir: str | None = None  # file:// images are read only inside this folder
    allow_remote_media: bool = False  # fetch http(s) images (off: batch boxes often have no network)
    max_image_bytes: int = 20 * 1024 * 1024
    # LoRA (vLLM's engine arguments, its defaults): raised to fit the adapters a job uses (engines/adapters.py)
    adapters: tuple[AdapterSource, ...] = ()
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None


_ENGINE = EngineSettings()
WEBHOOK_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")


@dataclass(frozen=True, slots=True)
class Webhook:
    """One ``[[webhooks]]`` endpoint: where batch events go, signed with its ``whsec_`` secret."""

    url: str
    secret: str
    events: tuple[str, ...] = WEBHOOK_EVENTS

    def secret_bytes(self) -> bytes:
        """The signing key: the base64 after ``whsec_`` (Standard Webhooks)."""
        return base64.b64decode(self.secret.removeprefix("whsec_"))


def _webhooks(raw: Any) -> tuple[Webhook, ...]:
    if not isinstance(raw, list):
        raise ConfigError("setting 'webhooks' must be [[webhooks]] tables")
    out = []
    for i, table in enumerate(raw):
        if not isinstance(table, dict) or set(table) - {"url", "secret", "events"}:
            raise ConfigError(f"[[webhooks]] #{i + 1}: give url, secret and optionally events")
        url, secret = table.get("url"), table.get("secret")
        events = tuple(table.get("events") or WEBHOOK_EVENTS)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"[[webhooks]] #{i + 1}: url must be an http(s) URL")
        if not isinstance(secret, str) or not secret.startswith("whsec_"):
            raise ConfigError(f"[[webhooks]] #{i + 1}: secret must be whsec_ followed by base64")
        try:
            base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ConfigError(f"[[webhooks]] #{i + 1}: secret must be whsec_ followed by base64") from None
        if set(events) - set(WEBHOOK_EVENTS):
            raise ConfigError(f"[[webhooks]] #{i + 1}: events may be {', '.join(WEBHOOK_EVENTS)}")
        out.append(Webhook(url, secret, events))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of spoolbatch; see the README's configuration table."""

    spool: Path = Path("spool")
    engine: str = "vllm"
    model: str | None = None
    chunk_size: int = 5000
    poll_interval: float = 10.0
    heartbeat_interval: float = 2.0
    settle_seconds: float = 2.0
    fake_latency: float = 0.0
    max_requests_per_job: int = 50_000
    max_job_bytes: int = 200 * 1024 * 1024
    max_queued_jobs: int = 5
    max_queued_requests: int = 250_000
    max_line_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 3
    max_wait: float = 3600.0  # seconds a job may go without a new chunk before it counts as high priority; 0: never
    fair_share: bool = True  # jobs of equal priority take chunks round-robin across owners; false: oldest first
    prefix_order: bool = True  # a chunk's generation requests reach the engine with shared prefixes adjacent
    dedupe: bool = True  # a deterministic request repeated in a chunk is answered once (each line its own result)
    gpu_max_memory_pct: float = 95.0
    gpu_max_temp_c: float = 85.0
    gpu_min_chunk: int = 500
    # The engine's settings, with EngineSettings' defaults (declared once, there).
    gpu_memory_utilization: float = _ENGINE.gpu_memory_utilization
    max_model_len: int | None = _ENGINE.max_model_len
    max_num_seqs: int | None = _ENGINE.max_num_seqs
    enforce_eager: bool = _ENGINE.enforce_eager
    dtype: str = _ENGINE.dtype
    cpu_kvcache_gib: int = _ENGINE.cpu_kvcache_gib
    model_dir: str | None = _ENGINE.model_dir
    tool_call_parser: str | None = _ENGINE.tool_call_parser
    reasoning_parser: str | None = _ENGINE.reasoning_parser
    media_dir: str | None = _ENGINE.media_dir
    allow_remote_media: bool = _ENGINE.allow_remote_media
    max_image_bytes: int = _ENGINE.max_image_bytes
    adapters: tuple[AdapterSource, ...] = _ENGINE.adapters  # [[adapters]] tables in config.toml
    max_loras: int = _ENGINE.max_loras  # adapters in one engine batch (raised to fit a job's)
    max_lora_rank: int = _ENGINE.max_lora_rank  # the largest adapter rank the engine takes (raised to fit)
    max_cpu_loras: int | None = _ENGINE.max_cpu_loras  # adapters kept loaded in host memory (None: max_loras)
    ray_address: str = "auto"  # --engine ray: a cluster address, "auto" (a running one, else local), "local"
    ray_concurrency: int = 1  # --engine ray: vLLM replicas, one GPU each on a GPU cluster
    api_keys: tuple[str, ...] = ()  # `serve`: Bearer keys (SPOOLBATCH_API_KEYS: comma-separated), admins of `default`
    keys: tuple[ApiKey, ...] = ()  # `serve`: [[keys]] tables, each key scoped to one project
    projects: tuple[ProjectSettings, ...] = ()  # [[projects]] tables: inbox folders and quotas
    webhooks: tuple[Webhook, ...] = ()  # `serve`: [[webhooks]] tables in config.toml
    webhook_backoff: float = 5.0  # `serve`: seconds before a failed delivery's first retry (doubling, up to 1 h)
    # Months unattended: retention, clean-up, logs, disk.
    retention_days: float = 30.0  # finished jobs' files are kept this long (`gc`, and the daemon hourly)
    gc_interval: float = 3600.0  # seconds between the daemons' clean-ups (one worker at a time); 0: never
    worker_grace_seconds: float = 86400.0  # a dead worker's heartbeat and metrics files stay this long
    temp_grace_seconds: float = 86400.0  # a crashed write's temporary stays this long
    log_max_bytes: int = 10 * 1024 * 1024  # the daemon log and each job log rotate past this; 0: no cap
    log_keep: int = 3  # rotated parts kept (NAME.1 .. NAME.N)
    daemon_log_file: bool | None = None  # logs/daemon.log; None: yes, except under systemd (the journal has it)
    disk_min_free_bytes: int = 100 * 1024 * 1024  # no chunk starts with less free (or less than it will write)

    def api_key_table(self) -> tuple[ApiKey, ...]:
        """Every key the server takes: ``api_keys`` (admins of ``default``), then ``[[keys]]``."""
        return tuple(ApiKey(key_digest(k), DEFAULT_PROJECT, True) for k in self.api_keys) + self.keys

    def project(self, name: str) -> ProjectSettings | None:
        """The ``[[projects]]`` table of ``name``, if there is one."""
        return next((p for p in self.projects if p.name == name), None)

    def engine_settings(self) -> EngineSettings:
        """The subset of settings the vLLM engine is built from."""
        names = {f.name for f in fields(EngineSettings)}
        return EngineSettings(**{n: getattr(self, n) for n in names})

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (``None`` values are left out, as unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _field_type(name: str) -> tuple[Any, bool]:
    """The type of Config's field ``name`` and whether it may be None (``int | None``: int, True)."""
    kind = _hints()[name]
    if not isinstance(kind, types.UnionType):
        return kind, False
    (base,) = [a for a in typing.get_args(kind) if a is not types.NoneType]  # T | None, never T | U
    return base, True


def _coerce(name: str, raw: Any) -> Any:
    """A setting's value from the environment (always a string) or the config file (TOML's types)."""
    if name == "webhooks":
        return _webhooks(raw)
    if name == "adapters":
        return _adapters(raw)
    if name == "keys":
        return _keys(raw)
    if name == "projects":
        return _projects(raw)
    if name == "api_keys":
        keys = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(keys, list | tuple) or not all(isinstance(k, str) for k in keys):
            raise ConfigError("setting 'api_keys' must be a list of strings")
        return tuple(k.strip() for k in keys if k.strip())
    kind, optional = _field_type(name)
    try:
        if isinstance(raw, str):
            if raw == "" and optional:
                return None
            if kind is bool:
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            if kind is int:
                return int(raw.replace("_", ""))
            if kind is float:
                return float(raw)
        if kind is Path:
            return Path(raw)
        return raw
    except ValueError:
        shown = f"{kind.__name__} | None" if optional else kind.__name__
        raise ConfigError(f"setting {name!r}: cannot read {raw!r} as {shown}") from None


def _check(config: Config) -> Config:
    positive = ("chunk_size", "max_requests_per_job", "max_job_bytes", "max_queued_jobs",
                "max_queued_requests", "max_line_bytes", "max_attempts", "gpu_min_chunk", "ray_concurrency",
                "max_image_bytes", "max_loras", "max_lora_rank")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"setting {name!r} must be at least 1, got {getattr(config, name)}")
    for name in ("poll_interval", "heartbeat_interval", "settle_seconds", "fake_latency", "retention_days",
                 "gc_interval", "worker_grace_seconds", "temp_grace_seconds", "log_max_bytes", "log_keep",
                 "disk_min_free_bytes", "max_wait"):
        if getattr(config, name) < 0:
            raise ConfigError(f"setting {name!r} must not be negative")
    if config.engine not in ENGINE_NAMES:
        raise ConfigError(f"unknown engine {config.engine!r}: choose one of {', '.join(ENGINE_NAMES)}",
                          hint="set it with --engine, SPOOLBATCH_ENGINE or `engine = ...` in config.toml")
    if config.max_cpu_loras is not None and config.max_cpu_loras < config.max_loras:
        raise ConfigError(f"setting 'max_cpu_loras' ({config.max_cpu_loras}) must be at least 'max_loras' "
                          f"({config.max_loras})")
    if not 0 < config.gpu_memory_utilization <= 1:
        raise ConfigError("setting 'gpu_memory_utilization' must be in (0, 1]")
    return config


def load_config(spool: Path | str | None = None, env: dict[str, str] | None = None,
                **flags: Any) -> Config:
    """Build the configuration: defaults < config file < environment < ``flags``."""
    env = dict(os.environ if env is None else env)
    known = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    root = Path(spool or env.get("SPOOLBATCH_SPOOL") or "spool")
    path = Path(env["SPOOLBATCH_CONFIG"]) if env.get("SPOOLBATCH_CONFIG") else root / "config.toml"
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[name] = _coerce(name, raw)
        if "adapters" in values:  # a relative folder is the config file's neighbour, wherever we run
            values["adapters"] = tuple(dataclasses.replace(a, path=str(path.parent / Path(a.path).expanduser()))
                                       for a in values["adapters"])
    for name in known:
        raw = env.get(f"SPOOLBATCH_{name.upper()}")
        if raw is not None and name not in ("spool", "webhooks", "adapters", "keys", "projects"):
            values[name] = _coerce(name, raw)
    values.update({k: v for k, v in flags.items() if v is not None})
    values["spool"] = root
    return _check(Config(**values))
