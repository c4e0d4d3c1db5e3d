"""Model zoo, registry and safe loading."""
from .loading import (
           create_model,
           fingerprint,
           head_of,
           input_spec_of,
           list_models,
           load_model,
           load_weights_,
           read_state_dict,
)
from .record import ModelRecord, record_of
from .spec import CIFAR10_SPEC, DIGITS_SPEC, MNIST_SPEC, InputSpec
from .zoo import MODELS

__all__ = ["create_model", "fingerprint", "head_of", "input_spec_of", "list_models", "load_model", "load_weights_",
           "read_state_dict", "ModelRecord", "record_of", "InputSpec", "CIFAR10_SPEC", "MNIST_SPEC", "DIGITS_SPEC", "MODELS"]
