"""One config schema for files and flags.

A workflow describes its settings as a dataclass.  Every field is a YAML key and a ``--flag`` at once; a value is
resolved as: the dataclass default, then the YAML file (``--config``), then the flags actually given on the command
line (the flag wins).  Unknown YAML keys are refused with the closest valid names.

Every setting's rule is declared once, on its dataclass field's metadata, and checked here (:func:`build_config`)
for every workflow before anything is written:

* ``"min"`` / ``"max"``: inclusive bounds; ``"above"`` / ``"below"``: exclusive bounds; ``"range": (lo, hi)``: the
  same as ``min`` lo and ``max`` hi;
* ``"choices"``: the allowed values (for a list, of each item), or a function returning them (read only when a
  config is checked, so that ``--help`` stays fast);
* floats must be finite (no NaN, no infinity) unless ``"finite": False``.

A subclass that re-declares a field (a new default or help) keeps the rules of the base class's field unless it
declares its own.  The error names the flag, the value, where it came from and what is allowed.

Which settings were given (a flag, or a key of the ``--config`` the user passed) and which are defaults (the
dataclass's, or a workflow's default config file) matters for settings that are alternatives, declared with
``"alternative_to": OTHER`` and ``"off": VALUE`` (``epochs`` and ``max_steps``, ``evals_per_epoch`` and
``eval_every``): the one given wins over a default; both given (at the same level: two flags, or two keys of the
file) is an error unless the first is ``off``; a flag wins over a key of the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
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


RULE_KEYS = ("min", "max", "above", "below", "range", "choices", "finite", "alternative_to", "off")


def field_rules(schema, name: str) -> dict:
    """The validation rules of setting ``name``: its field's metadata, over those of the same field in base classes."""
    rules: dict = {}
    for cls in reversed(getattr(schema, "__mro__", (schema,))):
        field = getattr(cls, "__dataclass_fields__", {}).get(name)
        if field is not None:
            rules.update({k: v for k, v in field.metadata.items() if k in RULE_KEYS})
    if "range" in rules:
        rules.setdefault("min", rules["range"][0])
        rules.setdefault("max", rules["range"][1])
    return rules


def _default(field):
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return field.default if field.default is not dataclasses.MISSING else None


def add_schema_arguments(
    parser: argparse.ArgumentParser,
    schema,
    title: str | None = None,
    defaults: dict | None = None,
    defaults_source: str | None = None,
) -> None:
    """Add one flag per dataclass field; defaults stay unset so that only given flags override the file.

    ``defaults``: the values of a default config file (named ``defaults_source``) that apply when no ``--config`` is
    given; the help shows those as the defaults."""
    group = parser.add_argument_group(title or f"{schema.__name__} (also YAML keys)")
    defaults = defaults or {}
    for field in dataclasses.fields(schema):
        if field.metadata.get("cli") is False:
            continue
        kind, is_list = _base_type(field.type)
        help_text = field.metadata.get("help", "")
        if field.name in defaults:
            shown = f"default: {defaults[field.name]}, from {defaults_source or 'the default config'}"
        else:
            shown = f"default: {_default(field)}"
        help_text = f"{help_text} ({shown})" if help_text else shown
        help_text = help_text.replace("%", "%%")
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS, help=help_text)
        rules = field_rules(schema, field.name)
        if rules.get("choices") and not callable(rules["choices"]):  # a callable is read when a config is checked
            kwargs["choices"] = rules["choices"]
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
    except (TypeError, ValueError, OverflowError):
        what = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(kind, kind.__name__)
        raise UserError(
            f"config key '{field.name}' ({_flag(field.name)}) must be {what}{' (or a list of them)' if is_list else ''}"
            f", got {value!r}"
        ) from None
    return value


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _allowed(rules: dict, kind) -> str:
    parts = []
    if "min" in rules and "max" in rules:
        parts.append(f"from {_show(rules['min'])} to {_show(rules['max'])}")
    elif "min" in rules:
        parts.append(f"at least {_show(rules['min'])}")
    elif "max" in rules:
        parts.append(f"at most {_show(rules['max'])}")
    if "above" in rules:
        parts.append(f"above {_show(rules['above'])}")
    if "below" in rules:
        parts.append(f"below {_show(rules['below'])}")
    noun = "a finite number" if kind is float else "a whole number" if kind is int else "a value"
    return f"{noun} {' and '.join(parts)}" if parts else noun


def rule_problem(rules: dict, value, kind) -> str | None:
    """What is wrong with ``value`` under ``rules`` (None: nothing)."""
    choices = rules.get("choices")
    choices = choices() if callable(choices) else choices
    if choices and value not in choices:
        return f"choose one of {', '.join(map(str, choices))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value) and rules.get("finite", True):
        return f"it must be {_allowed(rules, float)}"
    bad = (
        ("min" in rules and value < rules["min"])
        or ("max" in rules and value > rules["max"])
        or ("above" in rules and value <= rules["above"])
        or ("below" in rules and value >= rules["below"])
    )
    return f"it must be {_allowed(rules, kind)}" if bad else None


def validate(config, sources: dict | None = None) -> None:
    """Check every setting of ``config`` against its field's rules; the first one broken is a one-line
    ``UserError`` naming the flag, the value, where it came from and what is allowed."""
    schema = type(config)
    sources = sources or {}
    for field in dataclasses.fields(schema):
        rules = field_rules(schema, field.name)
        value = getattr(config, field.name)
        if value is None or not rules:
            continue
        kind, is_list = _base_type(field.type)
        for item in value if is_list and isinstance(value, (list, tuple)) else [value]:
            problem = rule_problem(rules, item, kind)
            if problem:
                where = sources.get(field.name)
                origin = f" (from {where})" if where and where != "the command line" else ""
                raise UserError(f"{_flag(field.name)} {_show(item)}{origin} is not allowed: {problem}")


def build_config(schema, values: dict, source: str = "the config", sources: dict | None = None):
    """The config from ``values`` (keys checked, values coerced), every setting validated (:func:`validate`)."""
    check_keys(values, schema, source)
    by_name = {f.name: f for f in dataclasses.fields(schema)}
    config = schema(**{k: _coerce(v, by_name[k]) for k, v in values.items()})
    validate(config, sources)
    return config


# how explicitly a value was given: the dataclass default < a workflow's default config file < the user's --config
# file < a flag on the command line
LEVEL_DEFAULT, LEVEL_DEFAULT_FILE, LEVEL_FILE, LEVEL_FLAG = range(4)


def resolve_alternatives(schema, values: dict, levels: dict, sources: dict) -> dict:
    """Apply the ``alternative_to`` rule (see the module docstring) to ``values``; returns the updated values."""
    values = dict(values)
    defaults = {f.name: _default(f) for f in dataclasses.fields(schema)}
    for field in dataclasses.fields(schema):
        rules = field_rules(schema, field.name)
        other = rules.get("alternative_to")
        if not other:
            continue
        off = rules.get("off")
        level, other_level = levels.get(field.name, LEVEL_DEFAULT), levels.get(other, LEVEL_DEFAULT)
        value = values.get(field.name, defaults[field.name])
        given = level >= LEVEL_FILE and value != off
        if given and level == other_level:
            place = "the command line" if level == LEVEL_FLAG else sources.get(field.name, "the config file")
            raise UserError(
                f"{_flag(field.name)} {_show(value)} and {_flag(other)} {_show(values.get(other))} conflict (both "
                f"given on {place}): {_flag(field.name)} above {_show(off)} decides and {_flag(other)} would be "
                "ignored; give one of them"
            )
        if other_level > level:
            values[field.name] = off  # the one given wins over a default (or a flag over the file)
    return values


def resolve(schema, args: argparse.Namespace, config_path: str | None = None, default_config: str | None = None):
    """Defaults <- YAML file <- flags given on the command line; every setting validated.

    ``config_path`` is the user's ``--config``; ``default_config`` a workflow's default file, read only when there
    is no ``--config`` and counted as defaults (a flag is never in conflict with it)."""
    values: dict = {}
    levels: dict = {}
    sources: dict = {}
    for path, level in ((config_path, LEVEL_FILE), (None if config_path else default_config, LEVEL_DEFAULT_FILE)):
        if not path:
            continue
        file_values = load_yaml(path)
        check_keys(file_values, schema, f"'{path}'")
        values.update(file_values)
        for key in file_values:
            levels[key], sources[key] = level, f"'{path}'"
    names = {f.name for f in dataclasses.fields(schema)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    values.update(flags)
    for key in flags:
        levels[key], sources[key] = LEVEL_FLAG, "the command line"
    values = resolve_alternatives(schema, values, levels, sources)
    return build_config(schema, values, sources=sources)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
