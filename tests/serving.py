"""Helpers for the `spoolbatch serve` tests: a server subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from tests.conftest import REPO


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One `spoolbatch serve` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str

    @property
    def base_url(self) -> str:
        """What the openai SDK takes."""
        return self.url + "/v1"

    def wait_up(self, timeout: float = 30.0) -> None:
        """Until /health answers (or the process dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not come up")

    def stderr(self) -> str:
        """What the process wrote on stderr (once it has exited)."""
        if self.proc.stderr and self.proc.poll() is not None:
            return self.proc.stderr.read().decode(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        if self.proc.stderr:
            self.proc.stderr.close()


def start_server(spool_root: str, *args: str, env: dict[str, str] | None = None, port: int | None = None,
                 wait: bool = True) -> Server:
    """Start `spoolbatch serve` on ``spool_root``; the caller stops it."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "spoolbatch", "serve", "--spool", spool_root, "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    server = Server(proc, f"http://127.0.0.1:{port}")
    if wait:
        server.wait_up()
    return server
