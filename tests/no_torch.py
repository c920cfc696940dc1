"""Run the bertpress CLI with the training stack made unimportable, as in a torch-free install.

    python tests/no_torch.py predict BUNDLE "some text"

Blocked: torch and the other training libraries, and bertpress's own training side (`pipeline`,
`stages`): the runtime commands must load none of it. Any import of a blocked package raises
ImportError; at exit the script fails if one was loaded.
"""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("torch", "transformers", "optimum", "datasets", "sklearn", "accelerate", "mlflow", "pipeline",
           "stages")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: the runtime must work without it")
        return None


if __import__("os").environ.get("BERTPRESS_BLOCK_ONNXRUNTIME"):  # a static bundle needs numpy only
    BLOCKED = (*BLOCKED, "onnxruntime")
sys.meta_path.insert(0, _Block())

if __name__ == "__main__":
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bertpress.cli import main

    sys.argv = ["bertpress", *sys.argv[1:]]
    try:
        main()
    finally:
        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
        if loaded:
            print(f"blocked modules were imported: {loaded}", file=sys.stderr)
            sys.exit(99)
