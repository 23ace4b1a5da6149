"""Shared pieces of the benchmarks: realistic inputs, timing, the figures file."""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"

SYSTEM = ("You are a careful recruiter's assistant. Score how well the candidate fits the role on a scale "
          "of 1 to 10 and give one sentence of reasoning. Be fair, concise and consistent.")
ROLES = ["backend engineer", "data scientist", "site reliability engineer", "product designer", "ML engineer",
         "technical writer", "security analyst", "frontend engineer"]
SKILLS = ["Python", "Go", "Kubernetes", "PyTorch", "SQL", "Rust", "React", "Terraform", "CUDA", "Spark",
          "statistics", "incident response", "API design", "accessibility", "threat modelling"]


def request(i: int, model: str, rng: random.Random, endpoint: str = "/v1/chat/completions") -> dict[str, Any]:
    """One candidate-scoring request: a shared system prompt, varied user text and max_tokens."""
    role = rng.choice(ROLES)
    skills = ", ".join(rng.sample(SKILLS, rng.randint(2, 6)))
    years = rng.randint(0, 20)
    text = f"Role: {role}. Candidate {i}: {years} years of experience; skills: {skills}."
    if endpoint == "/v1/completions":
        body: dict[str, Any] = {"model": model, "prompt": f"{SYSTEM}\n{text}\nScore:",
                                "max_tokens": rng.choice([8, 16, 24, 32])}
    else:
        body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                "max_tokens": rng.choice([8, 16, 24, 32]), "temperature": 0}
    return {"custom_id": f"cand-{i}", "method": "POST", "url": endpoint, "body": body}


def write_input(path: Path, n: int, model: str = "bench-model", seed: int = 0,
                endpoint: str = "/v1/chat/completions") -> Path:
    """A job file of ``n`` requests (written once, reused)."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            if sum(1 for _ in f) == n:
                return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(request(i, model, rng, endpoint), separators=(",", ":")) + "\n")
    return path


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version()}


def save(name: str, figures: dict[str, Any]) -> Path:
    """Write ``bench/out/NAME.json`` with the figures and the machine."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
    return path


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """Print a small aligned table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
