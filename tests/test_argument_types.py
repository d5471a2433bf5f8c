"""A ``_target_`` node's arguments are held to the types its parameters are annotated with,
before launch: the pack's classes, Lightning's callbacks and a user's own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest

from lightning_accel.argument_types import fits, parameter_types, type_name


@pytest.mark.parametrize(
    ("hint", "fitting", "not_fitting"),
    [
        (int, [3, -1], [1.5, True, "3", None]),
        (float, [1.5, 3], [True, "1e-3"]),
        (bool, [True, False], [0, "yes"]),
        (str, ["a"], [3, None]),
        (Optional[int], [None, 4], [4.5]),  # noqa: UP045 - as Lightning's classes spell it
        (int | str, [4, "a"], [4.5, [4]]),
        (Union[bool, Literal["link"]], [True, "link"], ["copy", 1]),  # noqa: UP007 - as above
        (Path, ["runs/a", Path("b")], [3]),
        (Sequence[int], [[1, 2], (3,), []], [[1, "a"], 3, "12"]),
        (list, [[1, "a"]], [{"a": 1}]),
        (tuple[int, str], [[1, "a"]], [[1, 2], [1]]),
        (tuple[int, ...], [[1, 2, 3]], [[1, 2.5]]),
        (dict[str, int], [{"a": 1}, "anything: unjudged"], []),
        (Any, [None, 1, "a"], []),
    ],
)
def test_values_are_held_to_plain_annotations(
    hint: Any, fitting: list[Any], not_fitting: list[Any]
) -> None:
    assert all(fits(value, hint) for value in fitting), type_name(hint)
    assert not any(fits(value, hint) for value in not_fitting), type_name(hint)


def test_types_read_as_in_source() -> None:
    assert type_name(int) == "int"
    assert type_name(Optional[int]) == "int | None"  # noqa: UP045 - as Lightning spells it
    assert type_name(Sequence[int]) == "Sequence[int]"
    assert type_name(Literal["a", "b"]) == "Literal['a', 'b']"


class _Unresolvable:
    def __init__(self, width: NotImportedHere = 3) -> None:  # noqa: F821 - on purpose
        self.width = width


def test_annotations_that_cannot_be_resolved_judge_nothing() -> None:
    assert parameter_types(_Unresolvable) == {}
    assert parameter_types(lambda width: width) == {}
