"""The CPU preparation for vLLM: environment, and the dtype that `auto` means on a CPU."""

from __future__ import annotations

from pathlib import Path

from spoolbatch.engines.cpu_env import cpu_dtype, cpu_has_native_bf16, prepare_cpu_env

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2\n\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n"


def cpuinfo(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_auto_is_float32_where_bf16_is_not_native(tmp_path: Path) -> None:
    plain = cpuinfo(tmp_path, AVX2_ONLY)
    assert not cpu_has_native_bf16(plain)
    assert cpu_dtype("auto", plain) == "float32"
    assert cpu_dtype("bfloat16", plain) == "bfloat16", "an explicit dtype is the user's choice"


def test_auto_stays_auto_with_avx512_bf16_or_amx(tmp_path: Path) -> None:
    modern = cpuinfo(tmp_path, SAPPHIRE)
    assert cpu_has_native_bf16(modern)
    assert cpu_dtype("auto", modern) == "auto"


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path: Path) -> None:
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    assert cpu_dtype("auto", str(tmp_path / "missing")) == "float32"


def test_prepare_cpu_env_keeps_what_the_user_exported() -> None:
    env = {"VLLM_CPU_KVCACHE_SPACE": "4"}
    assert prepare_cpu_env(1, env) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "4"}
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
