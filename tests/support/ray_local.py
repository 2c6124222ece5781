"""The test process's own in-process Ray (``ray_local`` in conftest)."""

from __future__ import annotations

import sys


def stop_ray_local() -> None:
    """Shut down this process's Ray, if it has one (pytest's own process: ``ray_local``)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
