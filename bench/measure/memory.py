"""Approximate CPU peak memory: the process's resident-set high-water mark.

Linux only. Before a measurement the kernel's high-water mark (VmHWM) is reset
by writing "5" to /proc/self/clear_refs; after it, VmHWM minus the RSS at the
start is the extra memory the process touched. Approximate by nature: the
allocator may reuse memory freed earlier (so the delta can read low), and other
threads of the process count too. Freed heap memory is handed back to the OS
first (glibc ``malloc_trim``) to make the first of these smaller. Where the
reset is not allowed, the lifetime peak (getrusage) is used and the figure is
marked as such. Depends only on the
standard library, so it also runs where the project's dependencies are absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _lifetime_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


_frozen = False


def release_free_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc malloc_trim), so the delta can see reuse.

    The first call also moves every object alive after its full collection (the
    imported libraries, the suite, the data) into the collector's permanent
    generation (``gc.freeze``): later collections then walk only what was made
    since, which took a full collection of a suite run's process from about
    0.25 s to milliseconds per measurement.
    """
    global _frozen
    gc.collect()
    if not _frozen:
        gc.freeze()
        _frozen = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakRSS:
    """Context manager: ``delta_mb`` is the approximate extra RSS touched inside it."""

    start_mb: float | None = None
    peak_mb: float | None = None
    method: str = "unavailable"

    def __enter__(self) -> PeakRSS:
        release_free_heap()
        self.start_mb = current_rss_mb()
        if self.start_mb is not None and _reset_peak():
            self.method = "vmhwm-reset"
        else:
            self.method = "ru_maxrss-lifetime"
            self.start_mb = self.start_mb if self.start_mb is not None else _lifetime_peak_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "vmhwm-reset":
            kb = _status_kb("VmHWM")
            self.peak_mb = None if kb is None else kb / 1024.0
        else:
            self.peak_mb = _lifetime_peak_mb()

    @property
    def delta_mb(self) -> float | None:
        if self.peak_mb is None or self.start_mb is None:
            return None
        return max(0.0, self.peak_mb - self.start_mb)

    def as_dict(self) -> dict:
        return {"cpu_peak_rss_delta_mb_approx": self.delta_mb,
                "cpu_peak_rss_mb_approx": self.peak_mb, "rss_method": self.method}
