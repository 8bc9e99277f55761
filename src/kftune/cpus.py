"""The CPUs this process may use, for its thread pools (PyTorch's, ONNX Runtime's, torchrun's workers')."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit() -> float | None:
    """The container's CPU limit in CPUs (cgroup v2 ``cpu.max``, else v1 CFS quota), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity (cgroup cpusets), capped by a container CPU limit (a pod's
    ``limits.cpu``).

    A thread pool sized by the node's cores instead (ONNX Runtime's default: one thread per physical
    core) would, in a pod limited to 1 CPU on a 64-core node, run 64 threads on one CPU's quota.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cpus, max(1, math.ceil(limit))) if limit else cpus
