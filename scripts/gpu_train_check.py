"""Train through the real stage code on a GPU: data -> finetune -> distill for a config, with
runtime.device=cuda, no tracking server and no cache (each stage's output goes to a folder).

    python scripts/gpu_train_check.py configs/tiny-ner.yaml configs/tiny.yaml

For a machine with a GPU but without the whole training install (no MLflow, no optimum needed):
prints, per config and stage, the device the Trainer used, the wall time and the test metrics, and
fails if training did not run on CUDA. Not part of the tests (CI has no GPU).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cache import Artifact  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.distributed import NullTracker  # noqa: E402
from pipeline.registry import BY_NAME  # noqa: E402
from pipeline.stage import StageContext  # noqa: E402

STAGES = ("data", "finetune", "distill")


def run_stages(config: str, work: Path) -> dict:
    import torch

    cfg = load_config(ROOT / config, ["runtime.device=cuda"])
    done: dict[str, Artifact] = {}
    report = {}
    for name in STAGES:
        spec = BY_NAME[name]
        out = work / name
        out.mkdir(parents=True)
        ctx = StageContext(cfg=cfg, name=name, key="gpu-check", out=out,
                           inputs={u: done[u] for u in spec.upstream}, tracker=NullTracker(),
                           log=logging.getLogger(f"bertpress.{name}"), scratch=work / f".work-{name}")
        start = time.perf_counter()
        result = spec.run(ctx)
        seconds = time.perf_counter() - start
        done[name] = Artifact(name, "gpu-check", out, {"outputs": result.outputs, "metrics": result.metrics})
        test = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("test/")}
        report[name] = {"seconds": round(seconds, 1), "test": test}
    report["device"] = torch.cuda.get_device_name(0)
    return report


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check needs a GPU")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bertpress").setLevel(logging.INFO)
    os.chdir(ROOT)  # configs name their data files relative to the checkout
    results = {}
    for config in sys.argv[1:] or ["configs/tiny-ner.yaml"]:
        with tempfile.TemporaryDirectory() as tmp:
            torch.cuda.reset_peak_memory_stats()
            results[config] = run_stages(config, Path(tmp))
            results[config]["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(results, indent=2))
    if any(r["peak_gpu_mb"] <= 0 for r in results.values()):
        sys.exit("training allocated no GPU memory: it did not run on CUDA")


if __name__ == "__main__":
    main()
