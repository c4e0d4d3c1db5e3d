"""Simulated quantization: fake-quant layers, calibration, BN re-estimation, file I/O."""
from .layers import QuantLayer
from .prepare import trace_layers, wrap_layers_
from .ptq import (
           STAGES,
           QuantConfig,
           QuantRun,
           calibrate_activations_,
           correct_bias_,
           prepare_quantized,
           quant_layers,
           quantize,
           reestimate_bn_,
           with_stage,
)
from .qat import enable_learned_steps_, finetune_quantized_
from .quantizer import (
           RangeObserver,
           WeightRounding,
           act_qparams,
           fake_quant,
           mse_range,
           quantize_int,
           signed_range,
           unsigned_range,
           weight_scales,
)

__all__ = ["enable_learned_steps_", "finetune_quantized_", "QuantLayer", "trace_layers", "wrap_layers_",
           "STAGES", "QuantConfig", "QuantRun", "with_stage", "calibrate_activations_", "correct_bias_", "prepare_quantized", "quant_layers", "quantize", "reestimate_bn_",
           "RangeObserver", "WeightRounding", "act_qparams", "fake_quant", "mse_range", "quantize_int", "signed_range",
           "unsigned_range", "weight_scales"]
