"""`spoolbatch serve` under load: poll latency with 50 pollers, the daemon's rate beside them, big files.

1. A fake-engine daemon runs a job alone, then an identical job while ``--pollers`` clients
   each poll ``GET /v1/batches/{id}`` every ``--poll-interval`` seconds: the poll latency
   (p50, p99) and the daemon's requests/s with the pollers against without.
2. A file of ``--upload-mb`` MB (under 50,000 lines) is uploaded through ``POST /v1/files`` and
   downloaded through ``GET /v1/files/{id}/content``: MB/s each way, and the server's peak RSS
   (VmHWM) before and after, which must not grow with the file.

Figures are printed and written to bench/out/serve.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import save, table, write_input  # noqa: E402

REPO = HERE.parent
KEY = "bench-key"
H = {"Authorization": f"Bearer {KEY}"}
ERRORS: list[float] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "spoolbatch", *cmd], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit("server did not start")


def create(client: httpx.Client, path: Path) -> str:
    with open(path, "rb") as f:
        file_id = client.post("/files", files={"file": (path.name, f)}, data={"purpose": "batch"}).json()["id"]
    r = client.post("/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"})
    r.raise_for_status()
    return str(r.json()["id"])


def job_rate(spool: Path, batch: str) -> float:
    """Requests/s of a finished job, from its checkpoint's own start and end (the API's are whole seconds)."""
    ckpt = orjson.loads((spool / "done" / f"{batch.removeprefix('batch_')}.checkpoint.json").read_bytes())
    print(f"  {batch}: {ckpt['total_lines']} lines in {ckpt['finished_at'] - ckpt['started_at']:.3f}s")
    return float(ckpt["total_lines"]) / max(ckpt["finished_at"] - ckpt["started_at"], 1e-9)


def run_job(client: httpx.Client, path: Path, spool: Path) -> tuple[str, float]:
    """Create a batch and wait for it; (id, requests/s)."""
    batch = create(client, path)
    while client.get(f"/batches/{batch}").json()["status"] not in ("completed", "failed"):
        time.sleep(0.2)
    return batch, job_rate(spool, batch)


async def pollers(url: str, batch: str, n: int, interval: float, stop: asyncio.Event) -> list[float]:
    """``n`` clients polling one batch until ``stop``; every request's latency in seconds."""
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = await client.get(f"/batches/{batch}")
            except httpx.TransportError:  # a kept-alive connection the server closed: counted, polled again
                ERRORS.append(time.perf_counter() - t)
                continue
            latencies.append(time.perf_counter() - t)
            r.raise_for_status()
            if r.json()["status"] in ("completed", "failed"):
                stop.set()
            await asyncio.sleep(interval)

    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url + "/v1", headers=H, limits=limits, timeout=30) as client:
        await asyncio.gather(*(one(client) for _ in range(n)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def big_file(path: Path, megabytes: int) -> Path:
    """A valid batch file of about ``megabytes`` MB in under 50,000 lines (long user messages)."""
    if path.exists() and abs(path.stat().st_size - megabytes * 1e6) < 1e6:
        return path
    lines = min(45_000, max(1, megabytes * 250))
    pad = "x" * max(10, int(megabytes * 1e6 / lines) - 200)
    with open(path, "wb") as f:
        for i in range(lines):
            f.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "m", "messages": [{"role": "user", "content": pad}],
                                           "max_tokens": 4}}) + b"\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per job")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds each poller waits between polls")
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--fake-latency", type=float, default=0.0002)
    parser.add_argument("--rounds", type=int, default=3, help="alone/polled pairs, interleaved; best of each")
    parser.add_argument("--quick", action="store_true", help="2,000 requests, a 20 MB file, one round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.upload_mb, args.rounds = 2_000, 20, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    spool = tmp / "spool"
    subprocess.run([sys.executable, "-m", "spoolbatch", "init", "--spool", str(spool)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    (spool / "config.toml").write_text("max_queued_requests = 1000000\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"SPOOLBATCH_API_KEYS": KEY}
    server = start(["serve", "--spool", str(spool), "--port", str(port)], env)
    daemon = start(["run", "--spool", str(spool), "--engine", "fake", "--settle-seconds", "0", "--poll-interval",
                    "0.1", "--chunk-size", "1000", "--fake-latency", str(args.fake_latency), "-q"], env)
    figures: dict[str, Any] = {"load_average_at_start": os.getloadavg()[0], "requests": args.requests,
                               "pollers": args.pollers,
                               "poll_interval": args.poll_interval, "upload_mb": args.upload_mb}
    try:
        wait_up(url)
        job = write_input(tmp / "job.jsonl", args.requests)
        with httpx.Client(base_url=url + "/v1", headers=H, timeout=600) as client:
            alone_rates, polled_rates, latencies, server_cpu, client_cpu = [], [], [], [], []
            for _ in range(args.rounds):  # interleaved, best of each: other load on the machine comes and goes
                alone_rates.append(run_job(client, job, spool)[1])
                batch = create(client, job)
                cpu0, polls0, mine0 = cpu_seconds(server.pid), len(latencies), time.process_time()
                latencies += asyncio.run(pollers(url, batch, args.pollers, args.poll_interval, asyncio.Event()))
                polled_rates.append(job_rate(spool, batch))
                server_cpu.append((cpu_seconds(server.pid) - cpu0) / max(1, len(latencies) - polls0))
                client_cpu.append((time.process_time() - mine0) / max(1, len(latencies) - polls0))
            alone, polled = max(alone_rates), max(polled_rates)
            figures.update(alone_rps=round(alone, 1), polled_rps=round(polled, 1),
                           alone_rps_rounds=[round(x, 1) for x in alone_rates],
                           polled_rps_rounds=[round(x, 1) for x in polled_rates],
                           ratio=round(polled / alone, 3), polls=len(latencies), poll_transport_errors=len(ERRORS),
                           p50_ms=round(pct(latencies, 0.50), 2), p99_ms=round(pct(latencies, 0.99), 2),
                           mean_ms=round(statistics.fmean(latencies) * 1000, 2),
                           server_cpu_ms_per_poll=round(min(server_cpu) * 1000, 2),
                           client_cpu_ms_per_poll=round(min(client_cpu) * 1000, 2))
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
            before = rss_peak_mb(server.pid)
            big = big_file(tmp / "big.jsonl", args.upload_mb)
            size = big.stat().st_size
            t = time.perf_counter()
            with open(big, "rb") as f:
                r = client.post("/files", files={"file": ("big.jsonl", f)}, data={"purpose": "batch"})
            r.raise_for_status()
            up = time.perf_counter() - t
            after_up = rss_peak_mb(server.pid)
            t = time.perf_counter()
            got = 0
            with client.stream("GET", f"/files/{r.json()['id']}/content") as resp:
                for block in resp.iter_raw():
                    got += len(block)
            down = time.perf_counter() - t
            assert got == size, (got, size)
            t = time.perf_counter()
            created = client.post("/batches", json={"input_file_id": r.json()["id"],
                                                    "endpoint": "/v1/chat/completions"})
            created.raise_for_status()
            figures["create_seconds"] = round(time.perf_counter() - t, 2)
            figures.update(file_mb=round(size / 1e6, 1), upload_mb_s=round(size / 1e6 / up, 1),
                           download_mb_s=round(size / 1e6 / down, 1), server_rss_peak_mb_before=round(before, 1),
                           server_rss_peak_mb_after=round(rss_peak_mb(server.pid), 1),
                           server_rss_peak_mb_after_upload=round(after_up, 1))
    finally:
        for proc in (daemon, server):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    table(f"GET /v1/batches/{{id}}: {args.pollers} pollers every {args.poll_interval}s, "
          f"{args.requests:,}-request job, best of {args.rounds} "
          f"(load average {figures['load_average_at_start']:.1f})", [
              (f"{figures['p50_ms']}", f"{figures['p99_ms']}", str(figures["polls"]), f"{figures['alone_rps']:,}",
               f"{figures['polled_rps']:,}", f"{figures['ratio']}x", str(figures["server_cpu_ms_per_poll"]),
               str(figures["client_cpu_ms_per_poll"]))],
          ("p50 ms", "p99 ms", "polls", "daemon req/s alone", "with pollers", "ratio", "server CPU ms/poll",
           "pollers' CPU ms/poll"))
    table(f"{figures['file_mb']} MB file through the server", [
        (str(figures["upload_mb_s"]), str(figures["download_mb_s"]), str(figures["server_rss_peak_mb_before"]),
         str(figures["server_rss_peak_mb_after"]), str(figures["create_seconds"]))],
        ("upload MB/s", "download MB/s", "server peak RSS MB before", "after upload+download",
         "create batch s (validate, place)"))
    print(f"\nwrote {save('serve', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
