"""Compressors as a registry: each one applies itself to a model and says how to rebuild its structure from a file."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..core.config import Config
from ..data.source import SourceLike
from ..core.registry import Registry
from ..core.schema import Schema

Rebuild = Callable[[nn.Module, dict, dict], nn.Module]  # (fresh base model, transform record, state dict) -> model
Apply = Callable[..., nn.Module]  # (model, data, config, teacher=..., progress=...) -> compressed model
# (schema of the file, the model this transform applies to, transform record, its field name): raise on a bad record
Check = Callable[[Schema, nn.Module, dict, str], None]


@dataclasses.dataclass(frozen=True)
class Compressor:
    """A registered compression step: its config class, how to apply it, and how to rebuild its structure on load."""

    name: str
    config_cls: type[Config]
    apply: Apply
    rebuild: Rebuild
    summary: str = ""
    check: Optional[Check] = None  # validates a stored transform record before `rebuild` reads it


COMPRESSORS: Registry[Compressor] = Registry("compressor")


def register_compressor(name: str, config_cls: type[Config], apply: Apply, rebuild: Rebuild, summary: str = "",
                        check: Optional[Check] = None) -> Compressor:
    """Register a compressor under `name`."""
    return COMPRESSORS.register(name)(Compressor(name, config_cls, apply, rebuild, summary, check))


def list_compressors() -> list[str]:
    """Names of all compressors."""
    return COMPRESSORS.names()


def transforms_of(model: nn.Module) -> list[dict]:
    """The transforms applied to `model` so far (each: compressor name, config, structure needed to rebuild it)."""
    return list(getattr(model, "transforms", None) or [])


def record_transform(model: nn.Module, name: str, config: Config | dict | None, **structure: Any) -> nn.Module:
    """Append a transform record to `model.transforms` (the model keeps the earlier ones)."""
    cfg = config.to_dict() if isinstance(config, Config) else dict(config or {})
    model.transforms = transforms_of(model) + [{"compressor": name, "config": cfg, **structure}]  # type: ignore[attr-defined]
    return model


def compress(model: nn.Module, name: str, data: Optional[SourceLike] = None, config: Optional[Config] = None,
             **kw: Any) -> nn.Module:
    """Apply the compressor `name` to `model` (data and config as that compressor takes them); returns the compressed model."""
    c = COMPRESSORS.get(name)
    return c.apply(model, data, config if config is not None else c.config_cls(), **kw)


def no_rebuild(model: nn.Module, transform: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """For transforms that change only values (the state dict carries them)."""
    return model
