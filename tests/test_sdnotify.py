"""sd_notify client against a real unix datagram socket, as systemd would bind it."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolbatch.worker import sdnotify


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, {"NOTIFY_SOCKET": str(path)}
    sock.close()


def test_states_arrive_as_datagrams(manager: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = manager
    assert sdnotify.ready(env)
    assert sock.recv(4096) == b"READY=1"
    assert sdnotify.watchdog(env)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping(env)
    assert sock.recv(4096) == b"STOPPING=1"
    assert sdnotify.notify("EXTEND_TIMEOUT_USEC=900000000", env)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=900000000"


def test_uses_the_process_environment(manager: tuple[socket.socket, dict[str, str]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sock, env = manager
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.ready()
    assert sock.recv(4096) == b"READY=1"


def test_abstract_socket_name() -> None:
    name = f"spoolbatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert sdnotify.watchdog({"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_dead_manager_is_not_an_error(tmp_path: Path) -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert sdnotify.ready({"NOTIFY_SOCKET": "vsock:2:1234"}) is False

