"""bench.host: the CPU identity written beside every benchmark figure."""

from hpa_jax.bench import host

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni

processor\t: 1
model name\t: a second CPU that must not be read
flags\t\t: amx_tile
"""

ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm sve sve2
CPU part\t: 0xd4f
"""


def test_x86_name_family_model_and_extensions_in_order(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(X86)
    assert host.cpu_identity(str(path)) == {
        "cpu": "AMD EPYC 9B45",
        "cpu_family_model": "family 26 model 2",
        "vector_extensions": [
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
        ],
    }


def test_arm_features_and_a_missing_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ARM)
    arm = host.cpu_identity(str(path))
    assert arm["vector_extensions"] == ["asimd", "sve", "sve2"]
    assert arm["cpu_family_model"] == "" and arm["cpu"]  # a name from platform, never empty
    missing = host.cpu_identity(str(tmp_path / "absent"))
    assert missing["vector_extensions"] == [] and missing["cpu"]
