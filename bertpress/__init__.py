"""bertpress's inference side: what ships with a released model.

`bertpress.runtime` (onnxruntime + tokenizers + numpy, no torch) loads a release bundle or a registry
URI and predicts or embeds; `bertpress.serve` puts it behind HTTP; `bertpress.cli` holds the
torch-free commands. Nothing here imports the training side (`pipeline`, `stages`) or torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
