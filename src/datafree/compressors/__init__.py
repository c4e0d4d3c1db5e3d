"""Compressors: each module registers itself here (quantize, prune, distill, hash, extend); one artifact format."""
from . import continual, hashing, prune, quant, student  # noqa: F401  (register their compressors)
from .base import COMPRESSORS, Compressed, Compressor, compress, list_compressors, register_compressor, run_compressor

__all__ = ["COMPRESSORS", "Compressed", "Compressor", "compress", "list_compressors", "register_compressor",
           "run_compressor"]
