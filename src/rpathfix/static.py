"""What the type checker needs, without importing `typing` when rpathfix runs.

Every command pays for its imports before it does anything. On CPython 3.11
`import typing` takes about 2 ms (beyond the `re` that argparse needs anyway), and each
`typing.NamedTuple` class another 0.1-0.2 ms (it compiles every postponed annotation into
a ForwardRef): about 4 ms of the 55 ms `rpathfix venv` takes for the torch stack.

So modules import TYPE_CHECKING and NamedTuple from here. mypy sees `typing`'s own (it
takes any `if TYPE_CHECKING:` as true); at run time TYPE_CHECKING is False and
NamedTuple builds the same class with collections.namedtuple: the annotated names are
the fields, their values the defaults, and everything else in the class body (methods,
properties, constants, the docstring) is set on the class.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    import collections

    # What a class body holds besides its fields and members; namedtuple sets its own.
    _BODY_ONLY = frozenset({"__module__", "__qualname__", "__annotations__", "__orig_bases__", "__classcell__"})
    # What namedtuple provides and a body may not replace (typing refuses these too).
    _RESERVED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                           "_make", "_replace", "_asdict", "_source"})

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[f] for f in fields if f in namespace]
            if any(f in namespace for f in fields[:len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = collections.namedtuple(name, fields, defaults=defaults, module=namespace.get("__module__"))
            for key, value in namespace.items():
                if key in _RESERVED:
                    raise AttributeError(f"{name}: cannot overwrite NamedTuple attribute {key}")
                if key not in _BODY_ONLY and key not in fields:
                    setattr(cls, key, value)
            cls.__qualname__ = namespace.get("__qualname__", name)
            cls.__annotations__ = dict(namespace.get("__annotations__", {}))
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Base of a typed named tuple: `class Point(NamedTuple): x: int; y: int = 0`."""
