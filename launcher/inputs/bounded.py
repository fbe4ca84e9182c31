"""inputs/bounded.py: a template (or any check on data) -> its result within bounds on time and size, or BoundExceeded.

A spec's templates, a model's chat template and every record they render are text from someone else: a loop without
end, `'x' * 10**10` or a filter asked for a billion columns must fail that one record (or, at `plan`, the spec with
exit 2), never hang a worker or fill its memory.
- time: a profile hook (sys.setprofile, this thread only) sees every Python call and return while the work runs
  (jinja2's loops call into the runtime each iteration) and raises past the deadline;
- size: the sandbox intercepts `*` and `**` and refuses results beyond MAX_ITEMS items or MAX_POW_BITS bits; filter
  arguments above MAX_FILTER_INT are refused (a width of 10**8 is a 100 MB string); the output stops at MAX_ITEMS
  characters;
- files and the environment: none (no loader: {% include %} fails; the sandbox keeps templates off Python's
  internals, so os.environ and open() are out of reach).
Measured on this 2-core machine: the hook costs ~3x on a loop-heavy template, ~0.1 ms on a chat template.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

RENDER_S = 2.0  # per record: real templates take milliseconds
MAX_ITEMS = 4_000_000  # characters of output (a million tokens and more), items of a repeated string or list
MAX_POW_BITS = 1_000_000
MAX_FILTER_INT = 1_000_000
_CHECK_EVERY = 256  # profile events between clock reads

T = TypeVar("T")
_OWN_FILES = frozenset({__file__, contextlib.__file__})


class BoundExceeded(RuntimeError):
    """A template or check went past its bound on time or size (the reason says which)."""


@contextlib.contextmanager
def deadline(seconds: float, what: str = "the template") -> Iterator[None]:
    """Raise BoundExceeded inside the block once it has run `seconds` (checked at Python calls and returns).

    Python takes a profile (or trace) function off when it raises, and C code may swallow that one exception and go
    on calling Python functions (seen in CI: jsonschema's uniqueItems over 20,000 objects, bounded at 1 s, ran its
    whole 310 s). So past the deadline the two hooks hand over: each, before it raises at a Python call, sets the
    other, which raises at the next call, until the block is left."""
    end = time.monotonic() + seconds
    events = 0
    expired = False
    message = f"{what} did not finish within {seconds:g} s (a loop without end?)"
    previous, previous_trace = sys.getprofile(), sys.gettrace()

    def trace_hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename not in _OWN_FILES:
            sys.setprofile(profile_hook)
            raise BoundExceeded(message)

    def profile_hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal events, expired
        if frame.f_code.co_filename in _OWN_FILES:  # this context manager's own exit must run
            return
        if not expired:
            events += 1
            if events % _CHECK_EVERY or time.monotonic() <= end:
                return
            expired = True
        elif event != "call":  # a return: the exception's own unwinding must not raise again
            return
        sys.settrace(trace_hook)  # takes over if this exception is swallowed
        raise BoundExceeded(message)

    sys.setprofile(profile_hook)
    try:
        yield
    finally:
        sys.setprofile(previous)
        sys.settrace(previous_trace)


def bounded(fn: Callable[[], T], seconds: float, what: str) -> T:
    with deadline(seconds, what):
        return fn()


def _size_guard(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    skip = 2 if getattr(fn, "jinja_pass_arg", None) is not None else 1  # (context,) value: the data itself is free

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[skip:], *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_FILTER_INT:
                raise BoundExceeded(f"filter {name!r} given {value}: at most {MAX_FILTER_INT:,}")
        return fn(*args, **kwargs)

    return guarded


class _Bounds:
    """What both sandboxes add: `*` and `**` checked, every filter's numbers bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def _guard_filters(self) -> None:
        filters: dict[str, Any] = self.filters  # type: ignore[attr-defined]
        for name, fn in list(filters.items()):
            filters[name] = _size_guard(name, fn)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_ITEMS:
                    raise BoundExceeded(f"a repetition of {len(seq) * n:,} items: at most {MAX_ITEMS:,}")
            return left * right
        if operator == "**":
            ints = isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
            if ints and right * max(1, abs(left).bit_length()) > MAX_POW_BITS:
                raise BoundExceeded(f"{left} ** {right} is too large a number")
            return left**right
        return super().call_binop(context, operator, left, right)  # type: ignore[misc]


class BoundedSandbox(_Bounds, SandboxedEnvironment):
    """The spec's prompt templates (data.templates): a sandbox with bounds."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._guard_filters()


class BoundedChatSandbox(_Bounds, ImmutableSandboxedEnvironment):
    """Chat templates as transformers renders them (trim_blocks, lstrip_blocks, loop controls, its tojson and
    raise_exception), with bounds: what `plan` dry-renders a chat template in."""

    def __init__(self) -> None:
        from jinja2.ext import Extension, loopcontrols
        from jinja2.nodes import CallBlock

        class Generation(Extension):  # transformers' {% generation %}: marks assistant text; renders its body
            tags = {"generation"}  # noqa: RUF012 - jinja2 declares it a set

            def parse(self, parser: Any) -> Any:
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

            def _body(self, caller: Callable[[], str]) -> str:
                return caller()

        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
        import json

        from jinja2.exceptions import TemplateError

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
                   sort_keys: bool = False) -> str:  # fmt: skip
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        self.filters["tojson"] = tojson
        self.globals["raise_exception"] = raise_exception
        self.globals["strftime_now"] = lambda fmt: time.strftime(fmt)  # a dry render: today will do
        self._guard_filters()


def render(template: Template, variables: Mapping[str, Any], seconds: float = RENDER_S) -> str:
    """The template rendered within `seconds` and MAX_ITEMS characters."""
    pieces: list[str] = []
    total = 0
    with deadline(seconds):
        for piece in template.generate(**variables):
            total += len(piece)
            if total > MAX_ITEMS:
                raise BoundExceeded(f"the template wrote more than {MAX_ITEMS:,} characters")
            pieces.append(piece)
    return "".join(pieces)


__all__ = [
    "MAX_ITEMS",
    "RENDER_S",
    "BoundExceeded",
    "BoundedChatSandbox",
    "BoundedSandbox",
    "bounded",
    "deadline",
    "render",
]
