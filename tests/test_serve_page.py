"""The web page at `/` in a real headless Chromium: a running job's progress and a worker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, drop, wait_for
from tests.serving import start_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def dump_dom(url: str, tmp: str) -> str:
    """The page's DOM after its script ran (Chromium's --dump-dom with a virtual time budget)."""
    assert CHROMIUM
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp}",
         "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True).stdout


# CI sets SPOOLBATCH_REQUIRE_BROWSER: there a missing Chromium fails the test instead of skipping it.
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("SPOOLBATCH_REQUIRE_BROWSER"),
                    reason="no Chromium: `apt-get install chromium` (.ci/run does)")
def test_the_page_shows_a_running_job_and_a_worker(spool: Spool, start_daemon: Any, tmp_path: Any) -> None:
    drop(spool, "webjob.jsonl", [chat_line(i) for i in range(400)])
    start_daemon("--chunk-size", "10", "--fake-latency", "0.05")
    server = start_server(str(spool.root))  # no keys: loopback only, which the browser is
    try:
        wait_for(lambda: spool.checkpoint("webjob").exists() and b'"lines_consumed": 0,' not in
                 spool.checkpoint("webjob").read_bytes())
        dom = dump_dom(server.url + "/", str(tmp_path / "chromium"))
        assert 'data-loaded="1"' in dom, dom[-2000:]
        row = re.search(r"<tr class=\"job\" data-job=\"webjob\">(.*?)</tr>", dom)
        assert row, dom[-3000:]
        assert "running" in row.group(1) and "batch_webjob" in row.group(1)
        pct = float(re.search(r'<span class="pct">([0-9.]+)%</span>', row.group(1)).group(1))  # type: ignore[union-attr]
        assert 0 < pct < 100
        worker = re.search(r"<tr class=\"worker\">(.*?)</tr>", dom)
        assert worker and "alive" in worker.group(1)
    finally:
        server.stop()
