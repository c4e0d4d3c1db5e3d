"""Real and synthetic data behind one abstraction (TensorData)."""
from .base import TensorData, concat_data, images_to_tensor
from .grid import save_grid
from .real import DATA_ENV, DATASET_SPECS, data_root, is_dataset_spec, load_dataset, load_raw
from .synthetic import SyntheticSet, SyntheticSetWriter, read_manifest

__all__ = ["TensorData", "concat_data", "images_to_tensor", "save_grid", "DATA_ENV", "DATASET_SPECS", "data_root",
           "is_dataset_spec", "load_dataset", "load_raw", "SyntheticSet", "SyntheticSetWriter", "read_manifest"]
