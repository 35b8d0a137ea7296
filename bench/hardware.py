"""What every benchmark prints first: the GPU, the versions, and the measured copy bandwidth."""

from __future__ import annotations

import platform
import re

import torch


def gpu_name() -> str:
    return (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})"
    )


def gpu_slug(name: str) -> str:
    """A short file-name tag for a device: h100, h200, ... or the name in lower-case-dashes."""
    m = re.search(r"(h100|h200|a100|h800|l40s|b200)", name.lower())
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> str:
    import triton

    return f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}"


def copy_bandwidth(device: str = "cuda") -> float:
    """Bytes read + written per second by a large copy on ``device``: 1 GiB device-to-device on
    a GPU (median, L2 flushed), 256 MiB in host memory on a CPU (median of 5)."""
    if device == "cpu":
        import time

        src = torch.empty(1 << 28, dtype=torch.uint8).random_()
        dst = torch.empty_like(src)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
        return 2 * src.numel() / sorted(times)[2]
    from triton.testing import do_bench

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)
