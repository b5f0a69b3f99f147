"""rpathfix.static: the run-time NamedTuple behaves as typing's, and no module imports typing."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import typing

import pytest

import rpathfix
from rpathfix.static import NamedTuple


def _pair() -> tuple[type, type]:
    """The same class body under typing.NamedTuple and under rpathfix.static's."""
    classes = []
    for base in (typing.NamedTuple, NamedTuple):

        class Point(base):  # type: ignore[valid-type,misc]
            """A point."""

            x: int
            y: int = 0
            label: str | None = None
            ORIGIN_NAME = "origin"

            @property
            def norm1(self) -> int:
                return abs(self.x) + abs(self.y)

            def moved(self, dx: int) -> Point:
                return self._replace(x=self.x + dx)

        classes.append(Point)
    return classes[0], classes[1]


def test_the_class_matches_typings() -> None:
    ref, ours = _pair()
    assert ours._fields == ref._fields == ("x", "y", "label")
    assert ours._field_defaults == ref._field_defaults == {"y": 0, "label": None}
    assert ours.__doc__ == ref.__doc__ == "A point."
    assert ours.__name__ == ref.__name__ and ours.__module__ == ref.__module__
    assert ours.ORIGIN_NAME == "origin"
    a, b = ref(3, -4), ours(3, -4)
    assert a == b == (3, -4, None) and repr(a) == repr(b) == "Point(x=3, y=-4, label=None)"
    assert b.norm1 == 7 and b.moved(1) == (4, -4, None) and type(b.moved(1)) is ours
    assert hash(a) == hash(b) and isinstance(b, tuple)
    with pytest.raises(AttributeError):
        b.x = 1  # type: ignore[misc]


def test_bad_bodies_are_refused_as_typing_refuses_them() -> None:
    with pytest.raises(TypeError, match="follows one with a default"):

        class Bad(NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]

    with pytest.raises(AttributeError, match="_replace"):

        class Worse(NamedTuple):
            a: int

            def _replace(self) -> None:  # type: ignore[override]
                pass


def test_no_rpathfix_module_imports_typing_at_run_time() -> None:
    """Start-up cost (static.py): importing every module leaves `typing` unloaded. The
    control: the same child imports `typing` when asked, and sees it."""
    names = sorted(m.name for m in pkgutil.walk_packages(rpathfix.__path__, "rpathfix.")
                   if m.name != "rpathfix.__main__")  # that one runs the command
    assert "rpathfix.build_venv" in names and "rpathfix.commands.venv" in names
    code = ("import sys\n"
            f"for n in {names!r}: __import__(n)\n"
            "extra = sys.argv[1:]\n"
            "for n in extra: __import__(n)\n"
            "print('typing' in sys.modules)\n")
    run = [sys.executable, "-c", code]
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert subprocess.run([*run, "typing"], capture_output=True, text=True, check=True).stdout.strip() == "True"
