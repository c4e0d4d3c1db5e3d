"""Compressors as a registry: each one applies itself to a model and says how to rebuild its structure from a file."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..core.config import Config
from ..core.registry import Registry
from ..core.schema import Schema
from ..data.source import SourceLike
from ..models.record import record_of

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
    plain: Optional[Callable[[nn.Module], nn.Module]] = None  # the model without this transform's structure, same function


@dataclasses.dataclass
class Compressed:
    """What a compressor returns: the compressed model, what it measured, and its validation curve (KD runs)."""

    model: nn.Module
    report: dict[str, Any]
    curve: list[dict]


COMPRESSORS: Registry[Compressor] = Registry("compressor")


def register_compressor(name: str, config_cls: type[Config], apply: Apply, rebuild: Rebuild, summary: str = "",
                        check: Optional[Check] = None, plain: Optional[Callable[[nn.Module], nn.Module]] = None
                        ) -> Compressor:
    """Register a compressor under `name`."""
    return COMPRESSORS.register(name)(Compressor(name, config_cls, apply, rebuild, summary, check, plain))


def list_compressors() -> list[str]:
    """Names of all compressors."""
    return COMPRESSORS.names()


def transforms_of(model: nn.Module) -> list[dict]:
    """The transforms applied to `model` so far (each: compressor name, config, structure needed to rebuild it)."""
    return list(record_of(model).transforms)


def record_transform(model: nn.Module, name: str, config: Config | dict | None, **structure: Any) -> nn.Module:
    """Append a transform record to the model's record (the earlier ones stay)."""
    cfg = config.to_dict() if isinstance(config, Config) else dict(config or {})
    rec = record_of(model)
    rec.transforms = rec.transforms + [{"compressor": name, "config": cfg, **structure}]
    return model


def run_compressor(model: nn.Module, name: str, data: Optional[SourceLike] = None, config: Optional[Config] = None,
                   **kw: Any) -> Compressed:
    """Apply the compressor `name` to `model` (data, config and keywords as that compressor takes them): the one path
    the library and the CLI share. Returns the compressed model with its report and validation curve."""
    c = COMPRESSORS.get(name)
    t0 = time.time()
    out = c.apply(model, data, config if config is not None else c.config_cls(), **kw)
    report = dict(record_of(out).reports.get(name) or {})
    curve = report.pop("curve", None) or []
    report.setdefault("seconds", round(time.time() - t0, 2))
    record_of(out).reports[name] = report
    return Compressed(out, report, curve)


def compress(model: nn.Module, name: str, data: Optional[SourceLike] = None, config: Optional[Config] = None,
             **kw: Any) -> nn.Module:
    """Apply the compressor `name` to `model` (data and config as that compressor takes them); returns the compressed model."""
    return run_compressor(model, name, data, config, **kw).model


def plain_copy(model: nn.Module) -> nn.Module:
    """`model` without the structure of transforms that register a `plain` form (e.g. hashing): same function."""
    for t in reversed(transforms_of(model)):
        c = COMPRESSORS.get(t["compressor"]) if t.get("compressor") in COMPRESSORS else None
        if c is not None and c.plain is not None:
            model = c.plain(model)
    return model


def no_rebuild(model: nn.Module, transform: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """For transforms that change only values (the state dict carries them)."""
    return model
