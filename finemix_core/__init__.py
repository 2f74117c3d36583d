"""finemix: Fine-mixing and E-PUR backdoor removal for fine-tuned language models."""

__version__ = "0.1.0"

from finemix_core import config as _config  # noqa: F401  (sets offline defaults before transformers loads)
