"""Whether a config value fits the type a class's parameter is annotated with (a
``_target_`` node's arguments, a strategy's ``strategy_options``), so that
``data.batch_size=1.5`` is refused before launch, naming the type, as LightningCLI refuses
it, instead of failing deep inside the run.

Only annotations whose meaning is plain are judged (``int``, ``float``, ``bool``, ``str``,
paths, ``Literal``, unions and ``None``, lists and tuples of those); any other, or one that
cannot be resolved, accepts every value."""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from lightning_accel.errors import ConfigError

_SCALARS: Mapping[type, Callable[[Any], bool]] = {
    bool: lambda value: isinstance(value, bool),
    int: lambda value: isinstance(value, int) and not isinstance(value, bool),
    float: lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    str: lambda value: isinstance(value, str),
}
_SEQUENCES = (list, tuple, Sequence)


def parameter_types(factory: Any) -> dict[str, Any]:
    """The resolved annotations of ``factory``'s parameters (a class's ``__init__``); empty
    where they cannot be resolved (a name imported only for type checkers)."""
    function = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations judge nothing
        return {}


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML and Hydra give it) fits ``hint``; True for any hint this
    module does not judge."""
    origin = get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    if (isinstance(hint, type) and issubclass(hint, PurePath)) or os.PathLike in (hint, origin):
        return isinstance(value, (str, PurePath))
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, option) for option in get_args(hint))
    if origin in _SEQUENCES or hint in _SEQUENCES:
        return _fits_sequence(value, origin or hint, get_args(hint))
    return True


def _fits_sequence(value: Any, kind: Any, items: tuple[Any, ...]) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    if kind is tuple and items and items[-1] is not Ellipsis:
        return len(value) == len(items) and all(map(fits, value, items))
    return not items or all(fits(item, items[0]) for item in value)


def type_name(hint: Any) -> str:
    """``hint`` as it reads in source (``int``, ``int | None``, ``list[int]``)."""
    if hint is None or hint is type(None):
        return "None"
    if isinstance(hint, type) and not get_args(hint):
        return hint.__name__
    if get_origin(hint) in (Union, types.UnionType):
        return " | ".join(type_name(option) for option in get_args(hint))
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def require_fits(key: str, value: Any, hint: Any, owner: str) -> None:
    """Raise a ConfigError naming ``key`` and the type ``owner`` (a class, or a strategy's
    name) takes unless ``value`` fits ``hint``."""
    if not fits(value, hint):
        raise ConfigError(key, value, f"is not of the type {owner} takes: {type_name(hint)}")
