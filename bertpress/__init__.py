"""bertpress's inference side: what ships with a released model.

`bertpress.runtime` (onnxruntime + tokenizers + numpy, no torch) loads a release bundle or a registry
URI and predicts or embeds; `bertpress.serve` puts it behind HTTP. `bertpress.pytorch` gives the same
embeddings from a PyTorch model (training install only).
"""

from pipeline import __version__

__all__ = ["__version__"]
