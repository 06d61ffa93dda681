# -*- test-case-name: tests.test_declared -*-
"""
Declared arguments: a plugin's optional C{args} class attribute, checked
once when the plugin loads and applied to every request before C{handle}.

    args = {
        "n": {"type": "integer", "required": True, "description": "how many"},
        "loud": {"type": "boolean", "default": False},
    }

A declaration names each argument's C{type} (C{string}, C{integer},
C{number} or C{boolean}), whether it is C{required} (C{False} when not
said), its C{default} when it is absent, and a C{description}.  Checking it
at load (L{check_declaration}) means a mistake in it is a load failure that
C{/reload} and C{--check} report, not a 500 on the first request; applying
it (L{Declared.apply}) means a plugin gets values of the declared types, and
a client that sent something else gets a 400 that says which argument is
wrong, without each plugin writing that code.

This module knows nothing of HTTP: the web layer answers L{ArgumentError}'s
message as a 400, the registry turns a C{ValueError} from
L{check_declaration} into a load failure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attr

__all__ = ["KEYS", "TYPES", "ArgumentError", "Declared", "Parameter", "check_declaration"]


class ArgumentError(Exception):
    """
    A request's arguments do not match the declaration; the message (C{str()}
    of it) is what the client is told, e.g. C{parameter 'n': required}.
    """


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Strict patterns: int() and float() would also take spaces, underscores,
# non-ASCII digits, "nan" and "inf", none of which a client means as a number.

_BOOLEANS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _typed_integer(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and no integer


def _typed_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError


def _to_integer(value: Any) -> int:
    if _typed_integer(value):
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)  # ValueError past sys.get_int_max_str_digits()
    raise ValueError


def _to_number(value: Any) -> float | int:
    if _typed_number(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
        if math.isfinite(number):  # 1e999 is inf
            return number
    raise ValueError


def _to_boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str):
        return _BOOLEANS[value.lower()]  # KeyError: not a boolean word
    raise ValueError


_CONVERTERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool], str]] = {
    "string": (_to_string, lambda v: isinstance(v, str), "must be a string"),
    "integer": (_to_integer, _typed_integer, "must be an integer"),
    "number": (_to_number, _typed_number, "must be a number"),
    "boolean": (_to_boolean, lambda v: type(v) is bool, "must be a boolean"),
}

TYPES = frozenset(_CONVERTERS)
"""The types an argument may be declared with."""

KEYS = frozenset({"type", "required", "default", "description"})
"""The keys a parameter's spec may have."""

_NO_DEFAULT: Any = object()


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Parameter:
    """
    One declared argument, checked.

    @ivar name: its name in C{request.args}.
    @ivar type: one of L{TYPES}.
    @ivar required: a request without it is answered 400.
    @ivar default: the value it gets when absent, or L{_NO_DEFAULT} (then it
        stays absent); see L{has_default}.
    @ivar description: what it is for, for people (and later /openapi.json).
    """

    name: str
    type: str
    required: bool = False
    default: Any = _NO_DEFAULT
    description: str = ""

    @property
    def has_default(self) -> bool:
        """
        Whether an absent argument is filled in with L{default}.
        """
        return self.default is not _NO_DEFAULT

    def convert(self, value: Any) -> Any:
        """
        C{value} as the declared type.

        @raise ArgumentError: it is not one.
        """
        convert, _, message = _CONVERTERS[self.type]
        try:
            return convert(value)
        except (ValueError, KeyError):
            raise ArgumentError(f"parameter {self.name!r}: {message}") from None


@attr.s(auto_attribs=True, frozen=True, slots=True)
class Declared:
    """
    A plugin's checked C{args} declaration.

    @ivar parameters: the declared arguments, in declaration order.
    """

    parameters: tuple[Parameter, ...] = ()

    def apply(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """
        A copy of C{args} with each declared argument converted to its type,
        absent optional ones given their default, and undeclared fields left
        as they are.

        @raise ArgumentError: a required argument is absent, or one cannot be
            converted; the first such in declaration order.
        """
        result = dict(args)
        for parameter in self.parameters:
            name = parameter.name
            if name in result:
                result[name] = parameter.convert(result[name])
            elif parameter.required:
                raise ArgumentError(f"parameter {name!r}: required")
            elif parameter.has_default:
                result[name] = parameter.default
        return result


def _check_parameter(name: Any, spec: Any) -> Parameter:
    """
    One entry of a declaration, checked; C{ValueError} naming it otherwise.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"parameter name {name!r} is not a non-empty string")
    where = f"parameter {name!r}"
    if name == "apikey":
        raise ValueError(f"{where}: the server removes apikey from request.args")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: its spec must be a dict, not {type(spec).__name__}")
    unknown = sorted(str(key) for key in spec if key not in KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})"
        )
    kind = spec.get("type")
    if kind not in TYPES:
        said = "no type" if "type" not in spec else f"unknown type {kind!r}"
        raise ValueError(f"{where}: {said} (one of {', '.join(sorted(TYPES))})")
    required = spec.get("required", False)
    if type(required) is not bool:
        raise ValueError(f"{where}: required must be True or False, not {required!r}")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{where}: description must be a string, not {description!r}")
    default = spec.get("default", _NO_DEFAULT)
    if default is not _NO_DEFAULT:
        if required:
            raise ValueError(f"{where}: a required parameter cannot have a default")
        _, typed, _ = _CONVERTERS[kind]
        if not typed(default):
            raise ValueError(f"{where}: default {default!r} is not of type {kind}")
    return Parameter(name, kind, required, default, description)


def check_declaration(args: Any) -> Declared:
    """
    A plugin's C{args} class attribute, checked: a dict of argument names to
    specs whose keys are among L{KEYS}, whose type is among L{TYPES}, and
    whose default (when given) is of that type and not on a required one.

    @raise ValueError: it is not; the message names the parameter at fault.
    """
    if not isinstance(args, Mapping):
        raise ValueError(f"args must be a dict of parameter specs, not {type(args).__name__}")
    return Declared(tuple(_check_parameter(name, spec) for name, spec in args.items()))
