"""Start-up cost of the commands people type: ``spoolbatch submit`` and ``spoolbatch status``.

Each command runs as a real subprocess (the installed ``spoolbatch`` entry point), several
times; figures are the median and best wall time. ``submit`` gets a fresh spool and a
50,000-line job file each time (it validates the file streaming); ``status`` reads a spool
that holds that queued job. A separate ``python -X importtime`` run
of each counts the modules imported and confirms that neither vLLM nor torch is among them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, save, table, write_input

HEAVY = ("vllm", "torch", "transformers")


def spoolbatch_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("spoolbatch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spoolbatch"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def imports(args: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
    """(modules imported, heavy ones among them, self+children import seconds of the top level)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "spoolbatch", *args], check=True,
                          capture_output=True, text=True, env=env)
    names, total = [], 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        names.append(name.strip())
        if not name[1:].startswith(" "):  # top level: nested imports are indented further
            total += int(cumulative)
    heavy = sorted({n for n in names if n.split(".")[0] in HEAVY})
    return len(names), heavy, total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    src = write_input(OUT / "inputs" / f"chat-{args.lines}.jsonl", args.lines)
    cmd = spoolbatch_cmd()
    rows, figures = [], {"lines": args.lines, "repeat": args.repeat, "commands": {}}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        spool = Path(tmp) / "spool"
        env = dict(os.environ, SPOOLBATCH_SPOOL=str(spool), NO_COLOR="1", COLUMNS="120")
        runs: dict[str, list[float]] = {"submit": [], "status": [], "status --json": []}
        for _ in range(args.repeat):
            shutil.rmtree(spool, ignore_errors=True)
            subprocess.run([*cmd, "init"], check=True, capture_output=True, env=env)
            runs["submit"].append(timed([*cmd, "submit", str(src)], env))
        for _ in range(args.repeat):
            runs["status"].append(timed([*cmd, "status"], env))
            runs["status --json"].append(timed([*cmd, "status", "--json"], env))
        counts = {"submit": imports(["submit", str(src), "--name", "importtime"], env),
                  "status": imports(["status"], env), "status --json": imports(["status", "--json"], env)}
    for name, times in runs.items():
        count, heavy, import_s = counts[name]
        figures["commands"][name] = {"median_seconds": round(statistics.median(times), 3),
                                     "best_seconds": round(min(times), 3), "every_run": [round(t, 3) for t in times],
                                     "modules_imported": count, "import_seconds": round(import_s, 3),
                                     "heavy_modules": heavy}
        rows.append((f"spoolbatch {name}" + (f" ({args.lines:,} lines)" if name == "submit" else ""),
                     f"{statistics.median(times):.3f}", f"{min(times):.3f}", str(count), f"{import_s:.3f}",
                     ", ".join(heavy) or "none"))
    table(f"command start-up (wall seconds, {args.repeat} runs each)", rows,
          ("command", "median s", "best s", "modules", "import s", "vllm/torch/transformers"))
    worst = max(c["median_seconds"] for c in figures["commands"].values())
    print(f"target 'well under a second': slowest median {worst:.2f}s ({1 / worst:.1f}x under 1 s)")
    figures["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"figures: {save('startup', figures)}")


if __name__ == "__main__":
    main()
