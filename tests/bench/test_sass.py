"""bench/sass.py compiles the decode kernels for Hopper without a GPU and reads their main loop.

Run as a user would, in a fresh process: this test session may have imported the kernels under
TRITON_INTERPRET=1 (CPU), which makes them uncompilable here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

nvidia = pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is absent")
if not (Path(nvidia.__file__).parent / "bin" / "cuobjdump").exists():
    pytest.skip("Triton's wheel carries no cuobjdump here", allow_module_level=True)


def run_sass(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "bench/sass.py", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_batch_1_gemv_loads_its_weights_16_bytes_at_a_time():
    line = next(ln for ln in run_sass("--ms", "1", "--shapes", "o").splitlines() if " o " in ln)
    assert " gemv " in line
    # K % 128 == 0 lets the GEMV issue 16-byte weight loads (plugins/awq/gemv.py), marked
    # evict-first (EF) in L2
    assert "weight load LDG.E.EF.128" in line, line
    per_int32 = float(re.search(r"([\d.]+) per int32", line).group(1))
    assert 10 < per_int32 < 100, line  # a real loop was found and measured


def test_decode_takes_the_tensor_cores_except_the_batch_1_gemv():
    out = run_sass("--ms", "1,16", "--shapes", "o,down")
    found = re.findall(r"M=(\d+)\s+(\w+)\s+(\w+) .*weight load (\S+), mma (\d+)", out)
    mma = {(int(m), shape): (path, load, int(n)) for m, shape, path, load, n in found}
    assert mma[1, "o"][0] == "gemv" and mma[1, "o"][2] == 0, out  # CUDA cores
    for key in ((1, "down"), (16, "o"), (16, "down")):  # the tensor-core GEMV
        path, load, n = mma[key]
        assert path == "mma" and n > 0 and load == "LDG.E.EF.128", (key, out)
