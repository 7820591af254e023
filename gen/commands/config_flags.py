"""argparse flags generated from a settings dataclass (train/config.py), so each setting's name, type, default and
help live in one place, and the dataclass built back from the parsed flags.

A field becomes ``--field-name`` (or its ``flag`` metadata), typed from its annotation: ``bool`` -> a switch,
``float`` -> `finite_float` (nan/inf refused, naming the flag), ``int``/``str`` as is; ``choices``, ``nargs``,
``const`` and ``metavar`` metadata pass through; a field without default is required. A field whose type is itself a
dataclass contributes that dataclass's flags. ``cli: False`` fields get no flag. Help ends with the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from gen.commands.common import finite_float
from gen.errors import UserError


def _base_type(annotation) -> type:
    """str, int, float, bool or a dataclass from an annotation such as ``int | None`` or ``Sequence[str]`` (the first
    non-None member of a union, the element type of a container)."""
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _base_type(members[0]) if members else annotation


def _cli_fields(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, _base_type(hints[f.name])) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per setting of `cls` (recursing into dataclass-typed fields); dest = the field name."""
    for f, kind in _cli_fields(cls):
        if dataclasses.is_dataclass(kind):
            add_dataclass_arguments(parser, kind)
            continue
        meta = f.metadata
        kwargs: dict[str, Any] = {"dest": f.name}
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required:
            kwargs["required"] = True
            help_text = meta["help"]
        else:
            kwargs["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f"{meta['help']} (default: {_default_text(kwargs['default'])})"
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = finite_float if kind is float else kind
            kwargs.update({key: meta[key] for key in ("choices", "nargs", "const", "metavar") if key in meta})
        parser.add_argument(flag_of(f), help=help_text.replace("%", "%%"), **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace, **overrides: Any):
    """`cls` built from the parsed flags (nested dataclasses too); fields without a flag keep their defaults unless
    given in `overrides`."""
    values: dict[str, Any] = {}
    for f, kind in _cli_fields(cls):
        values[f.name] = dataclass_from_args(kind, args) if dataclasses.is_dataclass(kind) else getattr(args, f.name)
    values.update(overrides)
    return cls(**values)


def flag_for_setting(cls, setting: str) -> str | None:
    """The flag that sets field `setting` of `cls` or of a dataclass inside it (None: no flag sets it)."""
    for f, kind in _cli_fields(cls):
        if dataclasses.is_dataclass(kind):
            flag = flag_for_setting(kind, setting)
            if flag:
                return flag
        elif f.name == setting:
            return flag_of(f)
    return None


def with_flag(cls, setting: str, message: str) -> UserError:
    """A library message about `setting` ("kd_weight 2.0: must be in [0, 1]") as the CLI says it, naming the flag
    ("--kd-weight 2.0: must be in [0, 1]")."""
    flag = flag_for_setting(cls, setting) or setting
    if message.startswith(f"{setting} ") or message.startswith(f"{setting}:"):
        return UserError(flag + message[len(setting):])
    return UserError(f"{flag}: {message}")
