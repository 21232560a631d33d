"""The host CPU's identity for benchmark records: its name, family/model and vector extensions.

CPU benchmark figures depend on the instruction sets as much as on the model name (an AVX-512
host runs oneDNN's kernels far faster than an AVX2 one), so every record carries both.
"""

from __future__ import annotations

import platform

# the extensions that decide a CPU kernel's speed, in the order they are printed
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
    "sve2",
)


def cpu_identity(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """{"cpu": model name, "cpu_family_model": "family F model M" (x86) or "", "vector_extensions":
    the `VECTOR_FLAGS` the first CPU lists}; from /proc/cpuinfo where there is one."""
    first: dict[str, str] = {}
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                first.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = first.get("model name") or platform.processor() or platform.machine() or "unknown"
    family_model = ""
    if "cpu family" in first and "model" in first:
        family_model = f"family {first['cpu family']} model {first['model']}"
    flags = set((first.get("flags") or first.get("Features") or "").split())
    return {
        "cpu": name,
        "cpu_family_model": family_model,
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
    }
