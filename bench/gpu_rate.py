"""Can spoolbatch keep a fast GPU fed? The real daemon against a simulated GPU (bench/simgpu.py).

The simulated engine computes each submitted chunk in a background thread at a set rate
(embeddings of 1,024 float32 dimensions, or short completions with max_tokens 1-10) and
counts its busy time; everything else (claiming, parsing, building bodies, writing,
checkpoints, merging) is the product. Figures, per workload, on a 200,000-request job:
- the GPU's busy fraction from its first chunk to its last (target >= 0.97: the daemon
  never makes it wait between chunks; "idle gaps" counts the chunks it waited for). A daemon
  slower than the GPU shows here as gaps on a long job; on a job of two or three chunks the
  look-ahead hands them over back to back and the shortfall shows only in the next figure;
- end-to-end requests/s, from ``Daemon(...)`` to the job's completion, against the GPU's own
  rate (target >= 0.97x);
- the daemon's CPU seconds and peak RSS;
then the daemon's peak RSS on a 500,000-line embeddings job (target: flat, < 300 MB; vLLM's
own batch runner used 177 GB on such a job, vllm#30268), and the same job through
``spoolbatch run --once --workers N`` (one worker, one per core; each worker is given its own
simulated GPU at the same rate, as ``--gpus`` gives each its own card).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import OUT, save, table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[7])
from simgpu import SimGpuEngine
from spoolbatch.config import load_config
from spoolbatch.worker import gcpolicy
from spoolbatch.worker.daemon import Daemon
from spoolbatch.store.spool import Spool
spool_dir, src, chunk, workload, rate, dims = sys.argv[1:7]
sp = Spool(spool_dir); sp.init()
os.link(src, sp.inbox / "bench.jsonl")
os.utime(sp.inbox / "bench.jsonl", (0, 0))
cfg = load_config(spool_dir, env={}, engine="fake", chunk_size=int(chunk), settle_seconds=0, heartbeat_interval=1,
                  max_requests_per_job=10**8, max_job_bytes=1 << 40)
engines = [SimGpuEngine(workload, float(rate), int(dims))]  # built before the clock starts
def factory():
    return engines[0]
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
d = Daemon(cfg, engine_factory=factory, echo=False)
gcpolicy.quiet()  # what Daemon.run does first
profile = os.environ.get("GPU_RATE_PROFILE")
if profile:
    import cProfile, pstats
    prof = cProfile.Profile(); prof.enable()
while d.loop_once().worked:
    pass
dt = time.perf_counter() - t
if profile:
    prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(int(profile))
d.executor.close()
r1 = resource.getrusage(resource.RUSAGE_SELF)
ckpt = json.loads((sp.done / "bench.checkpoint.json").read_bytes())
print(json.dumps({"seconds": dt, "rss": r1.ru_maxrss * 1024, "status": ckpt["status"],
                  "done": ckpt["requests_done"], "failed": ckpt["requests_failed"],
                  "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                  "results_bytes": ckpt["results_bytes"], "engine": engines[0].stats()}))
"""

TEXTS = ["senior backend engineer, Python and Go, 7 years", "data scientist with PyTorch and SQL",
         "site reliability engineer: Kubernetes, Terraform, incident response", "frontend engineer, React",
         "security analyst, threat modelling", "ML engineer, CUDA and Spark", "technical writer, API design"]


def write_jobs(path: Path, n: int, workload: str, encoding: str = "float") -> Path:
    """A job of ``n`` embedding lines (short texts) or completions (max_tokens 1-10), written once."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            if sum(1 for _ in f) == n:
                return path
    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            text = f"candidate {i}: {rng.choice(TEXTS)}"
            if workload == "embed":
                body: dict[str, Any] = {"model": "bench-embed", "input": text}
                if encoding != "float":
                    body["encoding_format"] = encoding
                line = {"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
            else:
                line = {"custom_id": f"g-{i}", "method": "POST", "url": "/v1/completions",
                        "body": {"model": "bench-gen", "prompt": f"Score 1-10. {text}\nScore:",
                                 "max_tokens": rng.randint(1, 10), "temperature": 0}}
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path


def run_in_process(src: Path, chunk: int, workload: str, rate: float, dims: int, profile: int = 0) -> dict[str, Any]:
    """One job through ``Daemon.loop_once`` in a fresh process (``profile``: print that many cProfile rows)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPU_RATE_PROFILE": str(profile or "")}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "spool"), str(src), str(chunk), workload,
                              str(rate), str(dims), str(HERE)],
                             check=True, stdout=subprocess.PIPE, stderr=None if profile else subprocess.PIPE,
                             text=True, env=env)
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["status"] == "completed", figures
    return figures


def run_workers(src: Path, chunk: int, workload: str, rate: float, dims: int, workers: int) -> dict[str, Any]:
    """The job through `spoolbatch run --once --workers N`, each worker with its own simulated GPU."""
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        spool, stats = Path(tmp) / "spool", Path(tmp) / "stats"
        stats.mkdir()
        env = {**os.environ, "PYTHONPATH": f"{HERE / 'simgpu_site'}{os.pathsep}{REPO}",
               "SPOOLBATCH_BENCH_SIMGPU": f"{workload}:{rate}:{dims}", "SPOOLBATCH_BENCH_SIMGPU_STATS": str(stats),
               "SPOOLBATCH_MAX_REQUESTS_PER_JOB": str(10**8), "SPOOLBATCH_MAX_JOB_BYTES": str(1 << 40)}
        exe = [sys.executable, "-m", "spoolbatch"]
        subprocess.run([*exe, "init", "--spool", str(spool)], check=True, capture_output=True, env=env)
        os.link(src, spool / "inbox" / "bench.jsonl")
        os.utime(spool / "inbox" / "bench.jsonl", (0, 0))
        t = time.perf_counter()
        subprocess.run([*exe, "run", "--once", "--workers", str(workers), "--engine", "fake", "--spool", str(spool),
                        "--chunk-size", str(chunk), "--settle-seconds", "0", "--poll-interval", "0.05", "-q"],
                       check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - t
        ckpt = json.loads((spool / "done" / "bench.checkpoint.json").read_bytes())
        assert ckpt["status"] == "completed", ckpt
        engines = [json.loads(p.read_text()) for p in sorted(stats.glob("*.json"))]
    busy = sum(e["busy_seconds"] for e in engines)
    job_seconds = ckpt["finished_at"] - ckpt["started_at"]
    return {"workers": workers, "engines": len(engines), "seconds": seconds, "job_seconds": job_seconds,
            "done": ckpt["requests_done"], "busy_seconds": busy,
            "busy_fraction": min(e["busy_fraction"] for e in engines) if engines else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rss-requests", type=int, default=500_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--embed-rate", type=float, default=50_000)
    parser.add_argument("--generate-rate", type=float, default=20_000)
    parser.add_argument("--dims", type=int, default=1024)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="worker counts for `run --workers`")
    parser.add_argument("--only", default="embed,base64,generate,rss,workers")
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions (cProfile) of each "
                        "in-process run: where the daemon's time goes")
    args = parser.parse_args()
    only = set(args.only.split(","))
    n, chunk = args.requests, args.chunk_size
    load0 = os.getloadavg()
    figures: dict[str, Any] = {"requests": n, "chunk_size": chunk, "dims": args.dims, "runs": [],
                               "loadavg_at_start": [round(x, 2) for x in load0]}
    cases = [("embed", "float", args.embed_rate), ("embed", "base64", args.embed_rate),
             ("generate", "-", args.generate_rate)]
    rows = []
    for workload, encoding, rate in cases:
        if (encoding if encoding == "base64" else workload) not in only:
            continue
        src = write_jobs(OUT / "inputs" / f"gpu-{workload}-{encoding}-{n}.jsonl", n, workload,
                         encoding if workload == "embed" else "float")
        r = run_in_process(src, chunk, workload, rate, args.dims, args.profile)
        e = r["engine"]
        rps = n / r["seconds"]
        figures["runs"].append({"workload": workload, "encoding": encoding, "rate": rate, "requests": n,
                                "seconds": round(r["seconds"], 2), "requests_per_second": round(rps),
                                "x_engine_rate": round(rps / rate, 3), "busy_fraction": round(e["busy_fraction"], 3),
                                "idle_gaps": e["idle_gaps"], "chunks": e["chunks"],
                                "cpu_seconds": round(r["cpu"], 2), "us_cpu_per_request": round(r["cpu"] / n * 1e6, 1),
                                "peak_rss_mb": round(r["rss"] / 2**20),
                                "results_mb": round(r["results_bytes"] / 2**20)})
        rows.append((f"{workload} ({encoding})" if workload == "embed" else "generate (max_tokens 1-10)",
                     f"{rate:,.0f}", f"{n:,}", f"{r['seconds']:.1f}", f"{rps:,.0f}", f"{rps / rate:.2f}",
                     f"{e['busy_fraction']:.2f}", f"{e['idle_gaps']}/{e['chunks']}", f"{r['cpu'] / n * 1e6:.1f}",
                     f"{n / r['cpu']:,.0f}", f"{r['rss'] / 2**20:.0f}"))
    if rows:
        table(f"the daemon in one process against a simulated GPU ({args.dims} dims, chunks of {chunk:,})", rows,
              ("workload", "GPU rate/s", "requests", "seconds", "requests/s", "x GPU rate", "GPU busy",
               "idle gaps/chunks", "CPU us/request", "requests/CPU-s", "peak RSS MB"))
        print("targets: GPU busy >= 0.97, requests/s >= 0.97x the GPU's rate. requests/CPU-s is the rate one "
              "free core could feed (the daemon's CPU time, which a loaded machine inflates less than wall time)")

    if "rss" in only:
        m = args.rss_requests
        src = write_jobs(OUT / "inputs" / f"gpu-embed-float-{m}.jsonl", m, "embed")
        r = run_in_process(src, chunk, "embed", args.embed_rate, args.dims)
        figures["rss"] = {"requests": m, "dims": args.dims, "peak_rss_mb": round(r["rss"] / 2**20),
                          "seconds": round(r["seconds"], 1), "results_gb": round(r["results_bytes"] / 2**30, 2)}
        print(f"\npeak RSS on a {m:,}-line embeddings job at {args.dims} dims (float): {r['rss'] / 2**20:.0f} MB "
              f"({r['results_bytes'] / 2**30:.1f} GB of results, {r['seconds']:.0f} s); target flat, < 300 MB; "
              "vLLM's run_batch: 177 GB (vllm#30268)")

    if "workers" in only:
        rows = []
        figures["workers"] = []
        for workload, encoding, rate in cases:
            if encoding == "base64":
                continue
            src = write_jobs(OUT / "inputs" / f"gpu-{workload}-{encoding}-{n}.jsonl", n, workload)
            for w in sorted({int(x) for x in args.workers.split(",")}):
                r = run_workers(src, chunk, workload, rate, args.dims, w)
                ideal = rate * max(r["engines"], 1)
                figures["workers"].append({"workload": workload, "rate_per_gpu": rate, **{
                    k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}})
                rows.append((workload, str(w), str(r["engines"]), f"{r['seconds']:.1f}", f"{n / r['seconds']:,.0f}",
                             f"{r['job_seconds']:.1f}", f"{n / r['job_seconds']:,.0f}",
                             f"{n / r['job_seconds'] / ideal:.2f}", f"{r['busy_fraction']:.2f}"))
        table("`spoolbatch run --once --workers N`, each worker its own simulated GPU: the command's wall time, "
              "and the job's from claim to completion", rows,
              ("workload", "workers", "GPUs used", "command s", "requests/s", "job s", "job requests/s",
               "x GPUs' rate", "least busy GPU"))
    figures["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average: start {' '.join(f'{x:.2f}' for x in load0)}, end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"figures: {save('gpu_rate', figures)}")


if __name__ == "__main__":
    main()
