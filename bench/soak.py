"""Soak: months of unattended running squeezed into minutes, and what it leaves behind.

Three fake-engine daemons (and `spoolbatch serve`, when its extra is installed) work one
spool for ``--minutes`` while this script drops many small and a few large jobs (some
through the HTTP API), kills a random process with SIGKILL every few seconds (a daemon, the
server, or a `spoolbatch gc` run in the middle of its work) and restarts it, and retention
is short, so the daemons' own clean-up and the gc runs remove finished jobs all along.

Every custom_id names its job's sequence number and size (``jSEQ-I-N``), so each finished
job is checked exactly once, whichever name or path it came in by, before its retention ends:
every id of 0..N-1 once in results or deadletter, none twice. It reports jobs and requests
done, kills survived, results lost or doubled (target 0), the spool's disk use over time
(target: back to the baseline after the last gc) and each long-lived process's RSS over
time (target: flat). Not part of `make test`; `--quick` is a one-minute smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from common import OUT, save, table  # noqa: E402

PY = sys.executable


def job_lines(seq: int, n: int, rng: random.Random) -> bytes:
    """``n`` chat requests whose custom_ids say (seq, i, n); about 1% broken lines (they go to deadletter)."""
    out = []
    for i in range(n):
        cid = f"j{seq}-{i}-{n}"
        if rng.random() < 0.01:
            out.append(json.dumps({"custom_id": cid, "method": "GET", "url": "/v1/chat/completions",
                                   "body": {"model": "soak", "messages": []}}))
        else:
            out.append(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                   "body": {"model": "soak", "max_tokens": 8,
                                            "messages": [{"role": "user", "content": f"job {seq} question {i}"}]}},
                                  separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def du(root: Path) -> int:
    """Bytes allocated to everything under ``root`` (never following links)."""
    total = 0
    for d, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(d, name)).st_blocks * 512
    return total


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Slot:
    """One long-lived process kept running (restarted after each kill)."""

    name: str
    cmd: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    kills: int = 0
    rss: list[tuple[float, int, float]] = field(default_factory=list)  # (t, pid, MB)

    def start(self, log: Path) -> None:
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = OUT / "soak-spool"
        self.spool = self.root / "spool"
        self.t0 = time.monotonic()
        self.seq = 0
        self.expected: dict[str, int] = {}  # dropped job name -> requests
        self.verified: dict[str, tuple[int, int, int, int]] = {}  # job -> (n, answered, lost, doubled)
        self.kills: dict[str, int] = {}
        self.disk: list[tuple[float, int]] = []
        self.gc_runs = 0
        self.gc_proc: subprocess.Popen[bytes] | None = None
        self.http_ok = self.http_failed = 0
        self.http_errors: dict[str, int] = {}
        self.slots: list[Slot] = []
        self.port = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- set-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.root.exists():
            subprocess.run(["rm", "-rf", str(self.root)], check=True)
        self.root.mkdir(parents=True)
        subprocess.run([PY, "-m", "spoolbatch", "init", "--spool", str(self.spool)], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
        a = self.args
        (self.spool / "config.toml").write_text(
            f"retention_days = {a.retention / 86400!r}\ngc_interval = {a.gc_interval}\n"
            f"worker_grace_seconds = {a.grace}\ntemp_grace_seconds = {a.grace}\n"
            f"log_max_bytes = {64 * 1024}\nlog_keep = 2\nmax_queued_jobs = 100000\n"
            f"max_queued_requests = 100000000\ndisk_min_free_bytes = {10 * 1024 * 1024}\n")
        self.baseline = du(self.spool)
        for k in range(a.daemons):
            self.slots.append(Slot(f"daemon-{k}", [PY, "-m", "spoolbatch", "run", "--spool", str(self.spool),
                                                   "--engine", "fake", "--settle-seconds", "0.5",
                                                   "--poll-interval", "0.5", "--heartbeat-interval", "1",
                                                   "--chunk-size", str(a.chunk_size), "-q"]))
        if a.serve:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.slots.append(Slot("server", [PY, "-m", "spoolbatch", "serve", "--spool", str(self.spool),
                                              "--port", str(self.port)]))
        for slot in self.slots:
            slot.start(self.root / f"{slot.name}.stderr")

    # --- feeding -----------------------------------------------------------------------------
    def drop(self, n: int) -> None:
        self.seq += 1
        name = f"soak-{self.seq:06d}"
        tmp = self.spool / "inbox" / f".{name}.tmp"
        tmp.write_bytes(job_lines(self.seq, n, self.rng))
        os.rename(tmp, self.spool / "inbox" / f"{name}.jsonl")
        self.expected[name] = n

    def post(self, n: int) -> None:
        import httpx

        self.seq += 1
        base = f"http://127.0.0.1:{self.port}/v1"
        try:
            with httpx.Client(timeout=10) as client:
                up = client.post(f"{base}/files", data={"purpose": "batch"},
                                 files={"file": (f"api-{self.seq}.jsonl", job_lines(self.seq, n, self.rng))})
                up.raise_for_status()
                made = client.post(f"{base}/batches", json={"input_file_id": up.json()["id"],
                                                             "endpoint": "/v1/chat/completions",
                                                             "completion_window": "24h",
                                                             "allow_bad_lines": True})
                made.raise_for_status()
                client.get(f"{base}/batches", params={"limit": 5}).raise_for_status()
            self.expected[made.json()["id"].removeprefix("batch_")] = n
            self.http_ok += 1
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            # the server was killed mid-call (or is starting again): the job may exist; it is checked if it does
            self.http_failed += 1
            reason = f"{exc.__class__.__name__}: {str(exc)[:80]}"
            self.http_errors[reason] = self.http_errors.get(reason, 0) + 1

    # --- chaos -------------------------------------------------------------------------------
    def kill_one(self) -> None:
        # daemon-0 is never killed: its RSS over the whole run is the leak check
        targets = [s for s in self.slots if s.alive() and s.name != "daemon-0"]
        if self.gc_proc is not None and self.gc_proc.poll() is None:
            targets.append(Slot("gc", [], self.gc_proc))
        if not targets:
            return
        victim = self.rng.choice(targets)
        assert victim.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        kind = victim.name.split("-")[0]
        self.kills[kind] = self.kills.get(kind, 0) + 1

    def tend(self) -> None:
        """Restart what was killed; start a gc run now and then."""
        for slot in self.slots:
            if not slot.alive() and self.now() < self.args.minutes * 60:
                slot.start(self.root / f"{slot.name}.stderr")
        if (self.gc_proc is None or self.gc_proc.poll() is not None) and self.rng.random() < 0.3:
            if self.gc_proc is not None and self.gc_proc.returncode == 0:
                self.gc_runs += 1
            self.gc_proc = subprocess.Popen([PY, "-m", "spoolbatch", "gc", "--json", "--spool", str(self.spool)],
                                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            env={**os.environ, "PYTHONPATH": str(REPO)})

    # --- checking ----------------------------------------------------------------------------
    def verify(self) -> None:
        """Check every newly completed job: each id of 0..N-1 exactly once in results or deadletter."""
        done = self.spool / "done"
        for ckpt_path in done.glob("*.checkpoint.json"):
            job = ckpt_path.name[: -len(".checkpoint.json")]
            if job in self.verified:
                continue
            try:
                ckpt = json.loads(ckpt_path.read_bytes())
                if ckpt["status"] != "completed":
                    continue
                with open(done / f"{job}.results.jsonl", "rb") as f:
                    results = [json.loads(line)["custom_id"] for line in f.read(ckpt["results_bytes"]).splitlines()]
                dead_path = self.spool / "deadletter" / f"{job}.jsonl"
                dead: list[str] = []
                if ckpt["deadletter_bytes"]:
                    with open(dead_path, "rb") as f:
                        dead = [json.loads(line).get("custom_id") for line in
                                f.read(ckpt["deadletter_bytes"]).splitlines()]
            except (OSError, ValueError, KeyError):
                continue  # being removed this instant (or half-read): it is either checked later or counted
            ids = results + [d for d in dead if d]
            if not ids:
                continue
            seq, n = ids[0].split("-")[0], int(ids[0].rsplit("-", 1)[1])
            counts: dict[str, int] = {}
            for cid in ids:
                counts[cid] = counts.get(cid, 0) + 1
            want = {f"{seq}-{i}-{n}" for i in range(n)}
            lost = len(want - counts.keys())
            doubled = sum(c - 1 for c in counts.values() if c > 1) + len(counts.keys() - want)
            self.verified[job] = (n, len(results), lost, doubled)

    def sample(self) -> None:
        t = round(self.now(), 1)
        self.disk.append((t, du(self.spool)))
        for slot in self.slots:
            settled = time.monotonic() - slot.started > 5  # past its imports and start-up
            if settled and slot.alive() and slot.proc is not None and (mb := rss_mb(slot.proc.pid)) is not None:
                slot.rss.append((t, slot.proc.pid, mb))

    # --- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        self.setup()
        end = a.minutes * 60
        next_small = next_large = next_kill = next_sample = next_verify = 0.0
        large_every = end / max(1, a.large_jobs)
        while self.now() < end:
            t = self.now()
            if t >= next_small:
                n = self.rng.randint(10, 200)
                self.post(n) if a.serve and self.rng.random() < 0.2 else self.drop(n)
                next_small = t + self.rng.expovariate(1 / a.small_every)
            if t >= next_large:
                self.drop(a.large_size)
                next_large = t + large_every
            if t >= next_kill and t > 5:
                self.kill_one()
                next_kill = t + self.rng.expovariate(1 / a.kill_every)
            if t >= next_verify:
                self.verify()
                next_verify = t + 0.5
            if t >= next_sample:
                self.sample()
                next_sample = t + a.sample_every
            self.tend()
            time.sleep(0.05)
        print(f"feeding stopped at {self.now():.0f}s; draining", flush=True)
        deadline = self.now() + a.drain_timeout
        while self.now() < deadline:
            self.tend()
            self.verify()
            left = [j for j in self.expected if j not in self.verified and self._exists(j)]
            if not left:
                break
            time.sleep(0.5)
        self.sample()
        drained_at = self.now()
        for slot in self.slots:  # the daemons stop cleanly; what is left is only what retention keeps
            if slot.alive() and slot.proc is not None:
                slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.proc.wait(60)
        if self.gc_proc is not None:
            self.gc_proc.wait()
        peak = max(d for _, d in self.disk)
        wait = max(a.retention, a.grace) + 2 - (self.now() - drained_at)
        if wait > 0:
            print(f"waiting {wait:.0f}s for the retention to pass, then a last gc", flush=True)
            time.sleep(wait)
        gc = subprocess.run([PY, "-m", "spoolbatch", "gc", "--json", "--spool", str(self.spool)], cwd=REPO,
                            capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        last_gc = json.loads(gc.stdout) if gc.returncode == 0 else {"error": gc.stderr.decode()[-500:]}
        self.sample()
        unverified = [j for j in self.expected if j not in self.verified]
        leftover = sorted(str(p.relative_to(self.spool)) for p in self.spool.rglob("*") if p.is_file())
        return self.report(peak, last_gc, unverified, leftover)

    def _exists(self, job: str) -> bool:
        sp = self.spool
        return any(p.exists() for p in (sp / "inbox" / f"{job}.jsonl", sp / "active" / f"{job}.jsonl",
                                        sp / "done" / f"{job}.checkpoint.json"))

    def report(self, peak: int, last_gc: dict[str, Any], unverified: list[str], leftover: list[str]) -> dict[str, Any]:
        v = self.verified.values()
        lost, doubled = sum(x[2] for x in v), sum(x[3] for x in v)
        rss = {}
        for slot in self.slots:
            if not slot.rss:
                continue
            lives: dict[int, list[tuple[float, float]]] = {}
            for t, p, mb in slot.rss:
                lives.setdefault(p, []).append((t, mb))
            mine = max(lives.values(), key=lambda life: life[-1][0] - life[0][0])  # its longest incarnation
            rss[slot.name] = {"incarnations": len(lives),
                              "lived_seconds": round(mine[-1][0] - mine[0][0], 1),
                              "rss_mb_first": round(mine[0][1], 1), "rss_mb_last": round(mine[-1][1], 1),
                              "rss_mb_max": round(max(mb for _, mb in mine), 1),
                              "samples": [(t, round(mb, 1)) for t, mb in mine]}
        figures = {
            "minutes": self.args.minutes, "daemons": self.args.daemons, "serve": bool(self.args.serve),
            "retention_seconds": self.args.retention,
            "jobs_dropped": len(self.expected), "jobs_checked": len(self.verified),
            "jobs_unchecked": len(unverified), "unchecked": unverified[:20],
            "requests_checked": sum(x[0] for x in v), "requests_answered": sum(x[1] for x in v),
            "lost": lost, "doubled": doubled, "kills": self.kills, "gc_runs_finished": self.gc_runs,
            "http_batches": self.http_ok, "http_calls_cut_by_kills": self.http_failed,
            "http_errors": self.http_errors,
            "disk_baseline_bytes": self.baseline, "disk_peak_bytes": peak, "disk_final_bytes": self.disk[-1][1],
            "disk_over_time": self.disk, "last_gc": {k: last_gc.get(k) for k in ("bytes_freed", "counts", "error")},
            "leftover_files": leftover, "rss": rss,
        }
        return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--small-every", type=float, default=0.5, help="mean seconds between small jobs")
    parser.add_argument("--large-jobs", type=int, default=4, help="large jobs over the run")
    parser.add_argument("--large-size", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between kill -9s")
    parser.add_argument("--retention", type=float, default=60.0, help="seconds a finished job is kept")
    parser.add_argument("--gc-interval", type=float, default=20.0, help="the daemons' own clean-up interval")
    parser.add_argument("--grace", type=float, default=20.0, help="dead workers' files and temporaries, seconds")
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--no-serve", dest="serve", action="store_false")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one minute, small jobs: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.large_jobs, args.large_size, args.retention, args.grace = 1.0, 1, 3000, 15.0, 10.0
    if args.serve:
        try:
            import fastapi  # noqa: F401
            import httpx  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            print("spoolbatch[serve] is not installed: running without the server")
            args.serve = False
    print(f"soak: {args.minutes:g} min, {args.daemons} daemons{' + server' if args.serve else ''}, kill -9 every "
          f"~{args.kill_every:g}s, retention {args.retention:g}s; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    f = Soak(args).run()
    table("soak", [
        ("jobs dropped / checked / unchecked", f"{f['jobs_dropped']} / {f['jobs_checked']} / {f['jobs_unchecked']}"),
        ("requests checked (answered)", f"{f['requests_checked']:,} ({f['requests_answered']:,})"),
        ("results lost / doubled", f"{f['lost']} / {f['doubled']}"),
        ("kill -9s survived", ", ".join(f"{k} {n}" for k, n in sorted(f["kills"].items())) or "0"),
        ("gc runs finished (besides the daemons')", str(f["gc_runs_finished"])),
        ("HTTP batches (calls cut by kills)", f"{f['http_batches']} ({f['http_calls_cut_by_kills']})"),
        ("disk: baseline / peak / after last gc", f"{f['disk_baseline_bytes'] / 1e6:.2f} / "
                                                  f"{f['disk_peak_bytes'] / 1e6:.2f} / "
                                                  f"{f['disk_final_bytes'] / 1e6:.2f} MB"),
        ("files left after the last gc", str(len(f["leftover_files"]))),
    ], ("figure", "value"))
    table("disk use over time", [(f"{t:.0f}s", f"{b / 1e6:.2f} MB") for t, b in f["disk_over_time"]],
          ("t", "spool"))
    table("RSS of each long-lived process (its longest incarnation; daemon-0 is never killed)", [
        (name, str(r["incarnations"]), f"{r['lived_seconds']:.0f}s", f"{r['rss_mb_first']:.1f}",
         f"{r['rss_mb_last']:.1f}", f"{r['rss_mb_max']:.1f}") for name, r in f["rss"].items()],
        ("process", "incarnations", "sampled over", "RSS MB first", "last", "max"))
    print(f"\nleft: {', '.join(f['leftover_files'][:15])}")
    print(f"figures: {save('soak', f)}")
    return 0 if f["lost"] == f["doubled"] == 0 and not f["unchecked"] else 1


if __name__ == "__main__":
    sys.exit(main())
