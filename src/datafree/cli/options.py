"""CLI options declared once, on the config classes: argparse groups generated from config fields and KD presets."""
from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Optional, Sequence

from ..core.errors import DatafreeError


def _kd_config(a: argparse.Namespace, steps: int, **fixed: Any):
    """The subcommand's KD preset with the options given on the command line."""
    from ..kd.loop import KDConfig

    kw = {n: getattr(a, "kd__" + n) for n in a._kd_flags}
    kw = {k: v for k, v in kw.items() if v is not None}
    return _configured(a._kd_flags, lambda: KDConfig.preset(a._kd_preset, steps=steps, seed=a.seed, **{**kw, **fixed}))


def _synth_config(a: argparse.Namespace, method: str, **fixed: Any):
    """The method's config from the synthesis options given; an option the method does not have is an error."""
    from ..synth import make_config

    kw = {n: getattr(a, "synth__" + n) for n in a._synth_flags}
    return _configured(a._synth_flags, lambda: make_config(method, strict=True, **{**kw, **fixed}))


def _configured(flags: dict[str, str], build: Any) -> Any:
    """Run `build`; a library error naming an option (`lr`) is re-worded with its flag (`--kd-lr`)."""
    try:
        return build()
    except DatafreeError as e:
        if e.option in flags:
            msg = re.sub(rf"(?<![\w-]){re.escape(e.option)}(?![\w-])", flags[e.option], str(e), count=1)
            raise DatafreeError(msg if msg != str(e) else f"{flags[e.option]}: {e}") from None
        raise


def _config_fields(cls: type) -> dict[str, Any]:
    """Fields of a config class, by name."""
    return {f.name: f for f in dataclasses.fields(cls)}


def _add_config_options(p: Any, fields: dict[str, Any], names: Sequence[str], defaults: Any, dest_prefix: str,
                        flags: Optional[dict[str, str]] = None, help_extra: str = "") -> dict[str, str]:
    """One flag per config field, its help and choices from the field's declaration; returns field -> flag."""
    out = {}
    for name in names:
        f = fields[name]
        meta = f.metadata
        flag = (flags or {}).get(name) or meta.get("flag") or "--" + name.replace("_", "-")
        default = (defaults.get(name) if isinstance(defaults, dict) else getattr(defaults, name)) if defaults is not None \
            else None
        h = (meta.get("help", "") + help_extra).replace("%", "%%")  # plain text: argparse formats help with %
        dest = dest_prefix + name
        if isinstance(f.default, bool):
            if meta.get("negate"):
                p.add_argument(flag, dest=dest, action="store_false", default=default, help=h)
            else:
                p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=h)
        else:
            kw = {"choices": list(meta["choices"])} if meta.get("choices") else {"metavar": name.upper()}
            p.add_argument(flag, dest=dest, type=type(f.default), default=default, help=h, **kw)
        out[name] = flag
    return out


def _kd_options(p: argparse.ArgumentParser, preset: str, names: Sequence[str]) -> None:
    """The KD option group of a subcommand: fields of KDConfig, defaults from the named preset."""
    from ..kd.loop import KDConfig

    g = p.add_argument_group(f"distillation (KD preset '{preset}')")
    flags = _add_config_options(g, _config_fields(KDConfig), names, KDConfig.preset(preset), "kd__")
    p.set_defaults(_kd_preset=preset, _kd_flags=flags)


def _synth_options(p: argparse.ArgumentParser, names: Optional[Sequence[str]] = None,
                   flags: Optional[dict[str, str]] = None, help_extra: str = "") -> None:
    """Synthesis options from the registered methods' config fields declared for the CLI (method defaults apply)."""
    from ..synth import SYNTHESIZERS

    fields: dict[str, Any] = {}
    for m in SYNTHESIZERS.names():
        for f in dataclasses.fields(SYNTHESIZERS.get(m).config_cls):
            if f.metadata.get("cli") and f.name not in fields:
                fields[f.name] = f
    owners = {n: [m for m in SYNTHESIZERS.names() if n in _config_fields(SYNTHESIZERS.get(m).config_cls)] for n in fields}
    g = p.add_argument_group("synthesis (defaults: the method's own)")
    out = {}
    for n in (names or list(fields)):
        others = [m for m in SYNTHESIZERS.names() if m not in owners[n]]
        only = ("" if not others else f" [{', '.join(owners[n])} only]" if len(owners[n]) <= len(others)
                else f" [all methods but {', '.join(others)}]")
        out.update(_add_config_options(g, fields, [n], None, "synth__", flags, only + help_extra))
    p.set_defaults(_synth_flags=out)


def _config_options(p: argparse.ArgumentParser, cls: type, title: str, prefix: str) -> None:
    """An option group generated from the fields of config class `cls` declared for the CLI (defaults from the
    config); the flags go to `_{prefix}flags` for `_config_from`."""
    fields = {n: f for n, (_, f) in cls.flat_fields().items()}  # nested configs' fields by their flat labels
    names = [n for n, f in fields.items() if f.metadata.get("cli")]
    flags = _add_config_options(p.add_argument_group(title), fields, names, cls().flat_values(), prefix)
    p.set_defaults(**{f"_{prefix}flags": flags})


def _config_from(a: argparse.Namespace, cls: type, prefix: str, **fixed: Any):
    """`cls` built from the options `_config_options` generated (library errors re-worded with their flags)."""
    flags = getattr(a, f"_{prefix}flags")
    kw = {n: getattr(a, prefix + n) for n in flags}
    return _configured(flags, lambda: cls.from_flat(**{**kw, **fixed}))


def _hash_options(p: argparse.ArgumentParser) -> None:
    """The hashing option group: HashConfig's fields declared for the CLI."""
    from ..compressors.hashing import HashConfig

    _config_options(p, HashConfig, "hashing", "hash__")


def _hash_config(a: argparse.Namespace, **fixed: Any):
    """HashConfig from the hashing options given."""
    from ..compressors.hashing import HashConfig

    return _config_from(a, HashConfig, "hash__", **fixed)


def _quant_options(p: argparse.ArgumentParser) -> None:
    """The quantization option group: QuantConfig's fields declared for the CLI."""
    from ..compressors.quant import QuantConfig

    _config_options(p, QuantConfig, "quantization", "q__")


def _quant_config(a: argparse.Namespace, **fixed: Any):
    """QuantConfig from the quantization options given."""
    from ..compressors.quant import QuantConfig

    return _config_from(a, QuantConfig, "q__", **fixed)


def estimate_args(p: argparse.ArgumentParser) -> None:
    """--no-estimate: the estimate of the top-1 drop is on by default."""
    p.add_argument("--no-estimate", action="store_true",
                   help="skip the estimate of the top-1 drop (printed, stored in the file and in --json as 'estimate'): "
                        "teacher vs compressed model on held-out synthetic samples that calibration and fine-tuning "
                        "never used (bn-stats, their own seed), mapped to points by a curve fitted on CIFAR-10 rows "
                        "(BENCHMARKS.md); about a tenth of a default run's time")


def estimate_into(a: argparse.Namespace, model: Any, teacher: Any, info: dict) -> str:
    """Unless --no-estimate: the estimated top-1 drop of `model` against `teacher`, put in `info` and returned as a
    human line (under torchrun: skipped, said in a note)."""
    if getattr(a, "no_estimate", False):
        return ""
    from ..core import parallel
    from .common import note

    if parallel.world_size() > 1:
        note("the accuracy-drop estimate is skipped under torchrun; run `datafree evaluate FILE --estimate`")
        return ""
    from ..evaluation.estimate import estimate_drop, estimate_line

    est = estimate_drop(teacher, model, seed=a.seed, progress=not a.no_progress)
    info["estimate"] = est
    return "\n" + estimate_line(est)
