"""A minimal systemd notify client (sd_notify(3)) over the NOTIFY_SOCKET datagram socket.

Every call is a no-op returning False when the process was not started by systemd with
``Type=notify`` (no ``NOTIFY_SOCKET``), so the daemon calls these unconditionally.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def _address(env: Mapping[str, str]) -> str | bytes | None:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path
    return None  # vsock addresses (vsock:CID:PORT) are not supported here


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify state string (e.g. 'READY=1'); True if it was delivered."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False  # a dead or unreachable manager must never stop the daemon
    return True


def ready(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd start-up is finished (READY=1)."""
    return notify("READY=1", env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    """Feed the service watchdog (WATCHDOG=1)."""
    return notify("WATCHDOG=1", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a clean stop has begun (STOPPING=1)."""
    return notify("STOPPING=1", env)

