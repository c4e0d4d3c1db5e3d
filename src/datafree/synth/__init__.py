"""Synthesis methods (registered by name) and their shared parts."""
from ..models.bn_hooks import BNStatHooks, batch_moments, bn_layers, bn_loss, gaussian_kl, require_bn
from . import bn_stats, deepinversion, gaussian, generative, inception  # noqa: F401  (registers the methods)
from .base import (
                         SYNTHESIZERS,
                         PixelConfig,
                         SynthConfig,
                         Synthesizer,
                         frozen_eval,
                         list_synthesizers,
                         make_config,
                         register_synthesizer,
                         synthesize,
)
from .bn_stats import BNStatsConfig, BNStatsInceptionConfig
from .deepinversion import AdaptiveDeepInversionConfig, DeepInversionConfig, js_divergence
from .gaussian import GaussianConfig
from .generative import (
                         CMIConfig,
                         DAFLConfig,
                         FastConfig,
                         GenerativeSynthesizer,
                         Generator,
                         GeneratorConfig,
                         RDSKDConfig,
)
from .inception import InceptionConfig

__all__ = ["SYNTHESIZERS", "PixelConfig", "SynthConfig", "Synthesizer", "frozen_eval", "list_synthesizers",
           "make_config", "register_synthesizer", "synthesize", "BNStatHooks", "batch_moments", "bn_layers",
           "bn_loss", "gaussian_kl", "require_bn", "BNStatsConfig", "BNStatsInceptionConfig", "GaussianConfig",
           "InceptionConfig", "DeepInversionConfig", "AdaptiveDeepInversionConfig", "js_divergence", "Generator",
           "GeneratorConfig", "GenerativeSynthesizer", "DAFLConfig", "RDSKDConfig", "CMIConfig", "FastConfig"]
