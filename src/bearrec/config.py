"""Typed configuration: YAML files into the dataclasses of `bearrec.sections`, `a.b=c` overrides,
unknown keys rejected, and a run's identity (which settings make two runs the same experiment).

Every setting that changes a result is declared in `bearrec.sections`, so a run directory's
`config.yaml` (written by `save_config`) is enough to reproduce it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from bearrec.atomic import atomic_write_text
from bearrec.errors import ConfigError
from bearrec.sections import (PRESETS, AnalysisConfig, BearConfig, CftConfig, Config, D2lrConfig,  # noqa: F401
                              DataConfig, DecodeConfig, IgdConfig, LoraConfig, LossConfig, ModelConfig,
                              PreferenceConfig, PrepareConfig, PromptConfig, Section, TinyModelConfig, TrainConfig,
                              check, setting)


# What a config written before a key existed ran with (a missing key is not today's default).
LEGACY = {"loss.bear.short_sets": "trivial", "train.selection_rule": "max"}
# Keys that change nothing a run measures (paths, logging, warnings): not part of its identity.
NOT_MEASURED = ("output_dir", "data.data_dir", "decode.batch_size", "train.report_to", "train.logging_steps",
                "train.save_steps", "train.min_valid_hits", "prompt.max_title_tokens", "prompt.on_too_long", "analysis.references",
                "analysis.other_softmax")


def effective_short_sets(loss_name: str, form: str, short_sets: str) -> str:
    """`loss.bear.short_sets` as the loss applies it (`auto` resolved)."""
    if short_sets != "auto":
        return short_sets
    from bearrec.methods import REGISTRY  # each method says what auto means for it

    method = REGISTRY.get(loss_name)
    return method.short_sets_auto(form) if method else "trivial"


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def flatten(data: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolved(data: dict) -> dict:
    """A config dict (e.g. a run's config.yaml) as the run behaved: keys it lacks that changed
    meaning get their LEGACY value, every other key it lacks today's default (a setting added later
    defaults to the old behaviour), and `auto` settings are resolved."""
    import copy

    out = copy.deepcopy(data)
    for key, value in LEGACY.items():
        if _get(out, key) is None:
            _set(out, key, value)
    _fill_defaults(out, to_dict(Config()))  # any other key it lacks was added later with the old behaviour
    bear = _get(out, "loss.bear")
    if isinstance(bear, dict):
        bear["short_sets"] = effective_short_sets(_get(out, "loss.name") or "bear", bear.get("form", "reference"),
                                                  bear["short_sets"])
    return out


def _fill_defaults(data: dict, defaults: dict) -> None:
    """Add, in place, the keys of `defaults` that `data` lacks (recursively; values `data` has stay)."""
    for key, value in defaults.items():
        if key not in data:
            data[key] = value
        elif isinstance(value, dict) and isinstance(data[key], dict):
            _fill_defaults(data[key], value)


def identity(data: dict) -> dict:
    """`resolved(data)` without the NOT_MEASURED keys and the `loss` sections its method does not
    read (`bearrec.methods`): what makes two runs the same experiment."""
    from bearrec.methods import REGISTRY

    out = resolved(data)
    loss = out.get("loss") or {}
    method = REGISTRY.get(loss.get("name"))
    if method is not None:
        for section in [f.name for f in dataclasses.fields(LossConfig) if f.name != "name"]:
            if section not in method.sections:
                loss.pop(section, None)
    for key in NOT_MEASURED:
        *path, last = key.split(".")
        node = _get(out, ".".join(path)) if path else out
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - a bug in this module


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}'; valid keys here: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict, cls: type = Config, *, source: str = "config") -> Any:
    try:
        return _build(cls, data or {}, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse_override_value(raw: str, hint: Any) -> Any:
    """Strings stay verbatim (`data.name=01` is the string '01'); everything else is YAML."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else ()
    if hint is str or str in args:
        if type(None) in args and raw.strip() in ("null", "~"):
            return None
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # left to the type check, which names the key


def apply_override(data: dict, override: str, cls: type = Config) -> None:
    """Apply one `a.b=c` override to a raw config dict, checking the key path against `cls`."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. data.name=office")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node, tp = data, cls
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(tp)}
        if part not in names:
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override {override!r}: unknown key '{where}'; valid keys here: {', '.join(names)}")
        hint = typing.get_type_hints(tp)[part]
        if i == len(parts) - 1:
            value = _parse_override_value(raw, hint)
            _coerce(value, hint, key)  # type check now, with the override in the message
            node[part] = value
        else:
            if not dataclasses.is_dataclass(hint):
                raise ConfigError(f"override {override!r}: '{'.'.join(parts[:i + 1])}' is not a section")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: '{'.'.join(parts[:i + 1])}' is not a mapping")
            tp = hint


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type = Config) -> Any:
    data: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override, cls)
    if cls is Config:
        apply_preset(data)
    return from_dict(data, cls, source=source)


def apply_preset(data: dict) -> None:
    """`decode.preset`: fill in the values the preset implies where the config does not give them
    (a given value that contradicts the preset is refused when the section is built)."""
    decode = data.get("decode")
    if isinstance(decode, dict) and decode.get("preset") in PRESETS:
        for key, value in PRESETS[decode["preset"]].items():
            decode.setdefault(key, value)


def declared(key: str, cls: type = Config) -> tuple[Any, Any, str]:
    """(type, default, help) of a setting as `bearrec.sections` declares it, e.g. `decode.num_beams`."""
    *path, last = key.split(".")
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    f = {f.name: f for f in dataclasses.fields(cls)}[last]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return typing.get_type_hints(cls)[last], default, f.metadata.get("help", "")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Any, run_dir: str | Path) -> Path:
    """Write the resolved config into a run directory as `config.yaml`."""
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
