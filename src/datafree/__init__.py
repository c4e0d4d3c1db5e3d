"""datafree: compress a trained classifier without its training data."""
from ._version import __version__
from .compressors.artifact import is_artifact, load_artifact, load_quantized, save_artifact, save_quantized
from .compressors.base import Compressed, compress, list_compressors, run_compressor
from .compressors.hashing import HashConfig, materialize
from .compressors.quant import QuantConfig, finetune_quantized_, quantize
from .core.errors import DatafreeError
from .core.runtime import tune_allocator
from .data import DATASET_SPECS, SyntheticSet, TensorData, load_dataset, save_grid
from .data.source import Batch, DataSource, TensorSource
from .evaluation.estimate import estimate_drop
from .evaluation.metrics import evaluate, model_size_bits, predict, similarity
from .kd.loop import KDConfig, distill_, kd_loss
from .models import InputSpec, ModelRecord, create_model, fingerprint, list_models, load_model, record_of
from .synth import list_synthesizers, make_config, synthesize

__all__ = ["__version__", "tune_allocator", "DATASET_SPECS", "SyntheticSet", "TensorData", "load_dataset", "save_grid",
           "DatafreeError", "evaluate", "estimate_drop", "model_size_bits", "predict", "similarity", "InputSpec", "create_model", "fingerprint",
           "list_models", "load_model", "KDConfig", "distill_", "kd_loss", "finetune_quantized_", "QuantConfig", "load_quantized", "quantize", "save_quantized",
           "list_synthesizers", "make_config", "synthesize", "is_artifact", "load_artifact", "save_artifact",
           "compress", "run_compressor", "Compressed", "record_of", "ModelRecord", "list_compressors", "HashConfig", "materialize", "Batch", "DataSource", "TensorSource"]
