"""One config schema for files and flags.

A workflow describes its settings as a dataclass.  Every field is a YAML key and a ``--flag`` at once; a value is
resolved as: the dataclass default, then the YAML file (``--config``), then the flags actually given on the command
line (the flag wins).  Unknown YAML keys are refused with the closest valid names.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from .errors import UserError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation):
    """(python type, is_list) for an annotation such as ``int``, ``str | None`` or ``list[str]``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # annotations are postponed in modules with __future__
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_schema_arguments(parser: argparse.ArgumentParser, schema, title: str | None = None) -> None:
    """Add one flag per dataclass field; defaults stay unset so that only given flags override the file."""
    group = parser.add_argument_group(title or f"{schema.__name__} (also YAML keys)")
    for field in dataclasses.fields(schema):
        if field.metadata.get("cli") is False:
            continue
        kind, is_list = _base_type(field.type)
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS, help=help_text)
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        if kind is bool:
            group.add_argument(_flag(field.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif is_list:
            group.add_argument(_flag(field.name), nargs="*", type=kind, **kwargs)
        else:
            group.add_argument(_flag(field.name), type=kind, **kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist: pass a YAML file such as configs/tiny-cpu.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def check_keys(keys, schema, source: str) -> None:
    valid = [f.name for f in dataclasses.fields(schema)]
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key).replace("-", "_"), valid, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise UserError(f"unknown config key '{key}' in {source}: {hint}")


def _coerce(value, field):
    kind, is_list = _base_type(field.type)
    if value is None:
        return None
    try:
        if is_list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [kind(v) for v in items]
        if kind is bool and isinstance(value, str):
            if value.lower() in ("true", "yes", "1", "on"):
                return True
            if value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float, str, bool):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"config key '{field.name}' must be {kind.__name__}{' list' if is_list else ''}, got {value!r}")
    return value


def build_config(schema, values: dict, source: str = "the config"):
    check_keys(values, schema, source)
    by_name = {f.name: f for f in dataclasses.fields(schema)}
    return schema(**{k: _coerce(v, by_name[k]) for k, v in values.items()})


def resolve(schema, args: argparse.Namespace, config_path: str | None = None):
    """Defaults <- YAML file <- flags given on the command line."""
    values: dict = {}
    if config_path:
        file_values = load_yaml(config_path)
        check_keys(file_values, schema, f"'{config_path}'")
        values.update(file_values)
    names = {f.name for f in dataclasses.fields(schema)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return build_config(schema, values)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
