"""What `device.precision=auto` means on the machine at hand, decided from its capability flags alone.

bf16 autocast where the hardware computes bf16 natively: a CUDA GPU that supports it, or a CPU with
AVX512-BF16 or AMX (Linux lists them in /proc/cpuinfo as avx512_bf16 / amx_bf16). Elsewhere fp32, since
emulated bf16 is slower than fp32. results/precision/ holds the measurement behind the CPU's choice.
"""

from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; none where there is no /proc/cpuinfo (auto is then fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def auto_precision(device_type: str, *, cpu_flags: frozenset[str], cuda_bf16: bool) -> tuple[str, str]:
    """The precision auto resolves to on `device_type`, and why (for the run's first line)."""
    if device_type == "cuda":
        return ("bf16", "the GPU supports bf16") if cuda_bf16 else ("fp32", "the GPU has no bf16")
    native = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags]
    if native:
        return "bf16", f"the CPU has {'/'.join(native)}"
    return "fp32", f"the CPU has no {' or '.join(CPU_BF16_FLAGS)}"
