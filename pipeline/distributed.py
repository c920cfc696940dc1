"""Multi-process training (torchrun / accelerate launch): who does what.

Every process runs the training stages (the transformers Trainer does the DDP part: it reads
RANK/WORLD_SIZE/LOCAL_RANK, initialises the process group, shards the batches and syncs the
gradients); only rank 0 takes locks, commits artifacts and logs to MLflow. The other ranks train
into a private temporary directory that is deleted afterwards, skip the non-training stages, and
wait for rank 0 to commit a stage before they read it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def wait_for(get: Callable[[], Any], what: str, timeout_s: float = 24 * 3600, poll_s: float = 1.0) -> Any:
    """Poll until rank 0 has committed `what` (its manifest exists); return it."""
    start = time.monotonic()
    while True:
        found = get()
        if found is not None:
            return found
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"rank {rank()} gave up waiting for rank 0 to finish {what}")
        time.sleep(poll_s)


class NullTracker:
    """The tracker of ranks other than 0: same interface, logs nothing."""

    def __init__(self, tracking_uri: str = "", experiment: str = ""):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id: str | None = None
        self.failure: str | None = None

    @contextmanager
    def pipeline_run(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        yield f"rank-{rank()}"

    @contextmanager
    def stage_run(self, stage: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Iterator[str]:
        yield f"rank-{rank()}"

    @contextmanager
    def child_run(self, name: str, params: Mapping[str, Any]) -> Iterator[str]:
        yield f"rank-{rank()}"

    def active_run_id(self) -> str:
        return f"rank-{rank()}"

    def __getattr__(self, name: str):  # log_params, log_metrics, set_tags, log_artifact, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def private_dir(root: Path, stage: str, key: str) -> Path:
    path = root / stage / f".rank{rank()}-{key}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path
