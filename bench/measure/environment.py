"""Provenance: what ran, where, with which versions.

Every record carries this, so a figure can be traced to the software, the
hardware, the thread settings, the project commit and the suite that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from bench.measure.code_version import MEASURING_DIRS, NOT_MEASURING, working_tree_digest


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD, with "-dirty" when the measuring code (bench/ but its report/, methods/) has
    uncommitted edits."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=cwd or Path(__file__).resolve().parents[2], timeout=5)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return None
        # Dirty only where the measuring code is (a README edit beside a run is not).
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *MEASURING_DIRS,
                                *(f":(exclude){d}" for d in NOT_MEASURING)],
                               capture_output=True, text=True, timeout=5,
                               cwd=cwd or Path(__file__).resolve().parents[2]).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_cores_available() -> int | None:
    """Cores this process may run on (the affinity mask), which can be fewer than the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


@lru_cache(maxsize=8)
def cpu_capability() -> str | None:
    """The instruction set PyTorch's CPU kernels dispatch to here (DEFAULT, AVX2, AVX512, ...):
    two CPUs with the same model name (a virtual machine often shows only "AMD EPYC") can
    still run different kernels, and so round differently."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def environment(suite_hash: str | None = None) -> dict:
    """Versions, hardware, thread settings, git commit and (when given) the suite hash."""
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
               "cuda": torch.version.cuda, "driver": _nvidia_driver()}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "fvcore": _version("fvcore"),
        "lowrank_bench": _version("lowrank-bench"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cpu_cores_available": cpu_cores_available(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": _version("numpy"),
        "safetensors": _version("safetensors"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "gpu": gpu,
        "git_commit": git_commit(),
        "code_digest": working_tree_digest(),
        "suite_hash": suite_hash,
    }


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
