"""One home per setting: a stage's settings are one dataclass, and its command-line options come from it.

Every pipeline stage reads its config section into a typed dataclass (``CropParams``, ``LocalizerParams``,
``AgatstonParams``, ...), whose field defaults are the only defaults there are.  A ``cacs`` command

- gets one ``--field-name`` option per field (:func:`add_dataclass_options`; ``--help`` shows each default),
- takes the config section as JSON (``--config-json``, ``--agatston-json``: what the Snakemake rules pass),
- and builds the dataclass with :func:`settings_from`: field default < JSON section < explicit option.

A JSON key that is no field of the dataclass is refused, naming the key.  Options are registered only when
their command is parsed (:class:`LazyParser`), so ``cacs --help`` does not import torch for the localizer's
settings, and an environment without torch can still build the parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "LazyParser",
    "add_dataclass_options",
    "option_fields",
    "option_name",
    "read_json",
    "settings_from",
]


class LazyParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose options may be registered when it is first used (parsed or asked for help).

    Subparsers inherit the class, so ``sub.add_parser(...).defer(fn)`` runs ``fn(parser)`` only when that
    subcommand is parsed: its settings dataclass (and the module that defines it) is imported only then.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, register: Callable[[argparse.ArgumentParser], None]) -> None:
        self._pending.append(register)

    def resolve(self) -> None:
        while self._pending:
            self._pending.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        self.resolve()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.resolve()
        return super().format_help()

    def format_usage(self) -> str:
        self.resolve()
        return super().format_usage()


def option_name(field: str) -> str:
    """``model_spacing_mm`` -> ``--model-spacing-mm``."""
    return "--" + field.replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _option_kwargs(tp: Any) -> dict[str, Any] | None:
    """argparse keyword arguments for a field type; None for types no option can carry (dict, dataclass)."""
    tp, _ = _strip_none(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str):
        return {"type": tp}
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return {"type": type(choices[0]), "choices": choices}
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return {"type": items[0], "nargs": "+"}
        if items and all(i is items[0] for i in items) and items[0] in (int, float, str):
            return {"type": items[0], "nargs": len(items)}
    return None


def option_fields(cls: type, only: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are settings: all (or ``only`` those) whose type an option can carry."""
    hints = _hints(cls)
    wanted = None if only is None else tuple(only)
    chosen = [f for f in dataclasses.fields(cls) if wanted is None or f.name in wanted]
    if wanted is not None:
        unknown = sorted(set(wanted) - {f.name for f in chosen})
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    return [f for f in chosen if _option_kwargs(hints[f.name]) is not None]


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return " ".join(_shown(v) for v in value)
    return str(value)


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    helps: Mapping[str, str] | None = None,
    choices: Mapping[str, tuple] | None = None,
    default_note: str | None = None,
    title: str | None = None,
) -> None:
    """One ``--field-name`` option per settings field of ``cls`` (or ``only`` those), each with ``default=None``.

    The type, ``nargs`` and choices come from the field's annotation: ``tuple[float, float, float]`` takes three
    values, ``tuple[int, ...]`` one or more, ``Literal[...]`` is a choice, ``bool`` is ``--x`` / ``--no-x``.
    ``None`` after parsing means "not given", so :func:`settings_from` can tell an option from its default.
    The help ends with the dataclass default (or ``default_note`` where the value is recorded elsewhere, as
    a trained model's Agatston convention).
    """
    helps, choices = dict(helps or {}), dict(choices or {})
    group = parser.add_argument_group(title or f"settings ({cls.__name__})")
    hints = _hints(cls)
    for f in option_fields(cls, only):
        kwargs = _option_kwargs(hints[f.name])
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
        nargs = kwargs.get("nargs")
        if isinstance(nargs, int) and nargs > 1 and f.name.endswith(("_mm", "_size")):
            kwargs["metavar"] = ("X", "Y", "Z")[:nargs]
        note = default_note or f"default: {_shown(field_default(f))}"
        text = helps.get(f.name, "")
        group.add_argument(
            option_name(f.name), dest=f.name, default=None, help=f"{text}; {note}" if text else note, **kwargs
        )


def read_json(text: str | None, option: str) -> dict[str, Any]:
    """The JSON object of an option such as ``--config-json`` (empty when the option was not given)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object (a config section), got {type(value).__name__}")
    return value


def check_keys(section: Mapping[str, Any], known: Iterable[str], option: str) -> None:
    known = sorted(known)
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"{option}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


def given_options(args: argparse.Namespace, cls: type, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The settings of ``cls`` given explicitly on the command line (options left at ``None`` were not)."""
    given = {}
    for f in option_fields(cls, only):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return given


def section_values(
    args: argparse.Namespace, cls: type, section: Mapping[str, Any], option: str, only: Iterable[str] | None = None
) -> dict[str, Any]:
    """The values a command sets for ``cls``: the JSON ``section`` (checked) overlaid by explicit options.

    Fields in neither keep the dataclass default.  JSON arrays become tuples where the field is a tuple.
    """
    known = [f.name for f in option_fields(cls, only)]
    check_keys(section, known, option)
    hints = _hints(cls)
    values = {key: _coerce(hints[key], value) for key, value in section.items()}
    return values | given_options(args, cls, only)


def _coerce(tp: Any, value: Any) -> Any:
    """A JSON value as the option would have parsed it: arrays as tuples, whole numbers as floats where float.

    So ``{"margin_xy_mm": 16}`` gives the same dataclass (and the same recorded settings) as ``--margin-xy-mm 16``.
    """
    tp, _ = _strip_none(tp)
    if value is None:
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(tp) is tuple and isinstance(value, list | tuple):
        items = typing.get_args(tp)
        kinds = [items[0]] * len(value) if len(items) == 2 and items[1] is Ellipsis else list(items)
        if len(kinds) == len(value):
            return tuple(_coerce(k, v) for k, v in zip(kinds, value, strict=True))
        return tuple(value)  # the dataclass reports the wrong length
    return value


def settings_from(
    args: argparse.Namespace,
    cls: type,
    section: Mapping[str, Any] | str | None = None,
    *,
    option: str = "--config-json",
    only: Iterable[str] | None = None,
    **fixed: Any,
):
    """``cls`` built from its defaults < the config ``section`` (dict or JSON text) < explicit command-line options.

    ``fixed`` are values that are no option of the command (a nested dataclass, say).
    """
    if section is None or isinstance(section, str):
        section = read_json(section, option)
    return cls(**section_values(args, cls, section, option, only), **fixed)
