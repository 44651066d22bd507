"""What a template may build, checked before it is built: the sandbox's size estimates and budgets.

`proto/templates.py` runs templates in Jinja2's immutable sandbox; this module keeps them small.
The rule: an operation whose result can be far larger than its inputs (`s.join(…)`, `format`, `%`,
`replace`, widths such as `center(n)`, `indent`, `wordwrap`, `expandtabs`, `translate`,
`to_bytes`) has its result's size estimated from its inputs and is refused before it runs when
the estimate is over `MAX_RENDERED_CHARS`. Every other operation turns text into at most a small
constant times its input (escaping, JSON, case mapping: 12 times at worst), so its input is
measured first (over the limit: refused) and its result after. Values are measured without
turning them into text (`text_size` walks them and stops at the limit), so `[s] * 60000` is never
written out to find out it is too big. All that one render builds counts against
`MAX_BUILT_CHARS`, which bounds the memory and time of loops that build and throw away.
"""

from __future__ import annotations

import re
import string
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, Sized, ValuesView
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any

from jinja2.filters import make_attrgetter
from jinja2.sandbox import SecurityError

MAX_RENDERED_CHARS = 64 * 1024
MAX_LOOP_ITERATIONS = 100_000  # all loops of one render together; also the longest range()
MAX_WRITTEN_CHARS = 4 * MAX_RENDERED_CHARS  # all output written, macros' and discarded blocks' too
MAX_BUILT_CHARS = 16 * MAX_RENDERED_CHARS  # all characters and items that one render's operations build
MAX_INT_BITS = 64 * 1024

_END = object()
_SPEC_NUMBER = re.compile(r"\d+")
_PERCENT = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)
_WIDTH_ARGS = {"center", "ljust", "rjust", "zfill", "batch", "slice"}
# filters that turn their input into text (a bounded multiple of it): the input is measured first
_TEXT_FILTERS = {
    "capitalize", "e", "escape", "filesizeformat", "forceescape", "lower", "pprint", "safe", "string",
    "striptags", "sum", "title", "tojson", "trim", "truncate", "upper", "urlencode", "urlize", "wordcount", "xmlattr",
}  # fmt: skip
# filters that build a list from their input: its items are counted as they come
_COLLECTING_FILTERS = {"list", "sort", "unique", "reverse", "batch", "slice", "groupby", "dictsort"}


@dataclass
class Budget:
    """What one render has used so far."""

    loops: int = 0
    written: int = 0
    built: int = 0


_budget: ContextVar[Budget] = ContextVar("template_budget")


def start_render() -> Any:
    """A fresh budget for one render; pass the token to `end_render`."""
    return _budget.set(Budget())


def end_render(token: Any) -> None:
    _budget.reset(token)


def _current() -> Budget | None:
    return _budget.get(None)


def size(value: Any) -> int:
    """Items or characters of a value, not counting what its items hold."""
    return len(value) if isinstance(value, str | bytes | bytearray | list | tuple | dict | set | frozenset) else 0


def text_size(value: Any, cap: int = MAX_RENDERED_CHARS, nested: bool = False) -> int:
    """About how many characters `str(value)` would have (`repr` for `nested` values and items of
    containers), found without building it: the walk stops once it passes `cap` (then the answer is
    only "over `cap`"), so it costs at most about `cap` steps whatever the value; the steps count
    against the render's `MAX_BUILT_CHARS`, so measuring in a loop cannot run on without end."""
    total, steps = 0, 0
    todo: list[Iterator[Any]] = [iter((value,))]  # iterators, not items: a list of 60,000 costs nothing to start
    while todo and total <= cap:
        item: Any = next(todo[-1], _END)
        if item is _END:
            todo.pop()
            continue
        steps += 1
        inner = nested or len(todo) > 1
        if isinstance(item, str):
            if not inner:
                total += len(item)
            elif item.isprintable():
                total += len(item) + item.count("\\") + item.count("'") + 2
            else:
                total += 10 * len(item) + 2  # \U0010ffff for each character at worst
        elif isinstance(item, bytes | bytearray):
            total += 4 * len(item) + 14
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 4 // 10 + 2  # digits, and room for "," grouping
        elif isinstance(item, float | complex):
            total += 48
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            todo.append(chain.from_iterable(item.items()))
        elif isinstance(item, list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
            total += 2 + 2 * len(item)
            todo.append(iter(item))
        elif hasattr(item, "__dict__"):  # namespace, cycler, …: what they hold shows in their text
            total += 32
            todo.append(iter((vars(item),)))
        else:
            total += 32
    charge(steps, "measuring a value")
    return total


def _total_text(values: Iterable[Any], cap: int = MAX_RENDERED_CHARS) -> int:
    """The text sizes of `values` added up (at most about `cap` steps in all)."""
    total = 0
    for v in values:
        total += text_size(v, cap - total, True)
        if total > cap:
            break
    return total


def charge(amount: int, what: str) -> None:
    """Count `amount` built characters or items against the render's `MAX_BUILT_CHARS`."""
    budget = _current()
    if budget is None:
        return
    budget.built += max(amount, 1)
    if budget.built > MAX_BUILT_CHARS:
        raise SecurityError(
            f"{what}: the template built or measured over MAX_BUILT_CHARS={MAX_BUILT_CHARS} characters in all"
        )


def refuse_over(estimate: int, what: str) -> None:
    if estimate > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} would build over MAX_RENDERED_CHARS={MAX_RENDERED_CHARS} characters")


def measured_text(value: Any, what: str, nested: bool = False) -> int:
    """The text size of an input about to be turned into text; refused (before) when over the limit."""
    n = text_size(value, MAX_RENDERED_CHARS, nested)
    refuse_over(n, what)
    charge(n, what)
    return n


def settle(value: Any, what: str) -> Any:
    """A value an operation built: within the limits, and counted against the render's budget."""
    if size(value) > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} would build over MAX_RENDERED_CHARS={MAX_RENDERED_CHARS} items")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"{what} would build an integer over MAX_INT_BITS={MAX_INT_BITS} bits")
    charge(size(value), what)
    return value


def counted(iterable: Iterable[Any], what: str, limit: int = MAX_RENDERED_CHARS) -> Iterator[Any]:
    """The items of `iterable`, refused as soon as there are more than `limit` (`MAX_RENDERED_CHARS`)."""
    for n, item in enumerate(iterable, start=1):
        if n > limit:
            raise SecurityError(f"{what} would build over {limit} items (MAX_RENDERED_CHARS={MAX_RENDERED_CHARS})")
        yield item


def collect_text(items: Iterable[Any], sep: int, what: str) -> list[Any]:
    """The items of a join, their text measured one by one: refused once the joined text would be over the limit."""
    out: list[Any] = []
    total = 0
    for item in items:
        total += text_size(item, MAX_RENDERED_CHARS - total) + (sep if out else 0)
        refuse_over(total, what)
        out.append(item)
    charge(total, what)
    return out


def check_loop_step() -> None:
    budget = _current()
    if budget is not None:
        budget.loops += 1
        if budget.loops > MAX_LOOP_ITERATIONS:
            raise SecurityError(f"loops ran over MAX_LOOP_ITERATIONS={MAX_LOOP_ITERATIONS} iterations")


def check_written(value: Any) -> None:
    """A piece of output, measured before it is turned into text, against `MAX_WRITTEN_CHARS`."""
    budget = _current()
    if budget is not None:
        budget.written += text_size(value, MAX_WRITTEN_CHARS - budget.written)
        if budget.written > MAX_WRITTEN_CHARS:
            raise SecurityError(f"the template wrote over MAX_WRITTEN_CHARS={MAX_WRITTEN_CHARS} characters")


def bounded_range(*args: int) -> range:
    """`range`, at most `MAX_LOOP_ITERATIONS` long (a range itself is small; its items are counted when used)."""
    rng = range(*args)
    if len(rng) > MAX_LOOP_ITERATIONS:
        raise SecurityError(f"range of {len(rng)} numbers; MAX_LOOP_ITERATIONS={MAX_LOOP_ITERATIONS}")
    return rng


def _check_widths(name: str, args: Iterable[Any]) -> None:  # center, ljust, …: the width is the size
    if name in _WIDTH_ARGS and any(isinstance(a, int) and abs(a) > MAX_RENDERED_CHARS for a in args):
        raise SecurityError(f"{name} with a width over MAX_RENDERED_CHARS={MAX_RENDERED_CHARS}")


def _int_args(values: Iterable[Any]) -> int:
    return max((abs(v) for v in values if isinstance(v, int)), default=0)


def format_size(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on `fmt.format(*args, **kwargs)`'s length, from the fields and what they show."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return len(fmt)  # the formatter refuses it itself
    total, auto = 0, 0
    whole = -1  # all the arguments' text: an upper bound on any part of one (measured if needed)
    for literal, field, spec, conversion in fields:
        total += len(literal)
        if field is None:
            continue
        head = re.match(r"[^.\[]*", field).group()  # type: ignore[union-attr]
        if head == "":
            head, auto = str(auto), auto + 1
        arg: Any = args[int(head)] if head.isdigit() and int(head) < len(args) else kwargs.get(head)
        if head != field:  # `{0.attr}`, `{0[key]}`: a part of an argument
            whole = _total_text([*args, *kwargs.values()]) if whole < 0 else whole
            shown = whole
        else:
            shown = text_size(arg, MAX_RENDERED_CHARS - total, conversion in ("r", "a"))
        widths = [int(n) for n in _SPEC_NUMBER.findall(spec or "")]
        if "{" in (spec or ""):
            widths.append(_int_args([*args, *kwargs.values()]))
        total += max([shown, *widths]) + sum(widths)
        if total > MAX_RENDERED_CHARS:
            break
    return total


def percent_size(fmt: str, values: Any) -> int:
    """An upper bound on `fmt % values`'s length, each `%` field taking its own argument in turn."""
    positional = values if isinstance(values, tuple) else (values,)
    total, i = len(fmt), 0
    for key, width, precision, conversion in _PERCENT.findall(fmt):
        if conversion == "%":
            continue
        extra = 0
        for part in (width, precision):
            if part == "*":
                extra += _int_args(positional[i : i + 1])
                i += 1
            elif part:
                extra += int(part)
        if key and isinstance(values, Mapping):
            arg = values.get(key)
        else:
            arg, i = (positional[i] if i < len(positional) else None), i + 1
        total += text_size(arg, MAX_RENDERED_CHARS - total, conversion in ("r", "a")) + extra
        if total > MAX_RENDERED_CHARS:
            break
    return total


def _method_size(name: str, owner: str | bytes | bytearray, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the size of `owner.name(*args, **kwargs)` for the str/bytes methods that can grow."""
    n = len(owner)
    values = [*args, *kwargs.values()]
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(n, _int_args(values[:1]))
    if name == "expandtabs":
        tab = "\t" if isinstance(owner, str) else b"\t"
        return n + owner.count(tab) * _int_args(values[:1] or [8])  # type: ignore[arg-type]
    if name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        hits = (owner.count(old) if old else n + 1) if isinstance(old, type(owner)) else 0  # type: ignore[arg-type]
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            hits = min(hits, args[2])
        return n + hits * max(size(new) - size(old), 0)
    if name in ("format", "format_map") and isinstance(owner, str):
        if name == "format_map":
            return format_size(owner, (), args[0] if args and isinstance(args[0], Mapping) else {})
        return format_size(owner, args, kwargs)
    if name == "translate" and isinstance(owner, str) and args and isinstance(args[0], Mapping):
        longest = max(
            (text_size(v, MAX_RENDERED_CHARS) for v in counted(args[0].values(), what="translate")), default=1
        )
        return n * max(longest, 1)
    if name == "hex":
        return 3 * n
    if name == "encode":
        return n if isinstance(owner, str) and owner.isascii() else 4 * n
    return 0


def prepare_call(name: str, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse, before it runs, a method call whose result would be over the limits; the arguments to call it with."""
    _check_widths(name, [*args, *kwargs.values()])
    what = f"{type(owner).__name__}.{name}"
    if isinstance(owner, str | bytes | bytearray):
        if name == "join" and args:
            return (collect_text(args[0], len(owner), what), *args[1:])
        if name in ("format", "format_map"):
            _check_format(owner if isinstance(owner, str) else "", [*args, *kwargs.values()], percent=False)
        refuse_over(_method_size(name, owner, args, kwargs), what)
    elif isinstance(owner, int) and name == "to_bytes":
        refuse_over(_int_args([*args[:1], kwargs.get("length", 1)]), what)
    elif name == "fromkeys" and args:
        refuse_over(len(args[0]) if isinstance(args[0], Sized) else 0, what)
        return (list(counted(args[0], what)), *args[1:])
    return args


def _check_format(fmt: str, args: Iterable[Any], percent: bool) -> None:
    """Widths and precisions of a format string (written or taken from the arguments) stay small."""
    if percent:
        specs = re.findall(r"%[^a-zA-Z%]*", fmt)
    else:
        try:
            specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
        except ValueError:
            return  # the formatter refuses it itself
    if any(int(n) > MAX_RENDERED_CHARS for spec in specs for n in _SPEC_NUMBER.findall(spec)):
        raise SecurityError(f"a format width over MAX_RENDERED_CHARS={MAX_RENDERED_CHARS}")
    nested = any(("*" if percent else "{") in spec for spec in specs)
    flat = [v for a in args for v in (a.values() if isinstance(a, Mapping) else [a])]
    if nested and _int_args(flat) > MAX_RENDERED_CHARS:
        raise SecurityError(f"a format width over MAX_RENDERED_CHARS={MAX_RENDERED_CHARS}")


def check_percent(fmt: str, values: Any, what: str) -> None:
    """`fmt % values` (the `%` operator, the `format` filter): widths and the result's size, before it is built."""
    _check_format(fmt, values if isinstance(values, tuple) else (values,), percent=True)
    refuse_over(percent_size(fmt, values), what)


def prepare_filter(
    name: str, value: Any, rest: list[Any], kwargs: dict[str, Any], env: Any = None
) -> tuple[Any, list[Any]]:
    """Refuse, before it runs, a filter whose result would be over the limits; the value and arguments to use."""
    what = f"filter {name}"
    _check_widths(name, [*rest, *kwargs.values()])
    if name == "join" and env is not None:
        sep = kwargs.pop("d", rest[0] if rest else "")
        attribute = kwargs.pop("attribute", rest[1] if len(rest) > 1 else None)
        if attribute is not None:  # what the filter would join: the attribute of each item
            value = map(make_attrgetter(env, attribute), counted(value, what))
        return collect_text(value, text_size(sep), what), [sep]
    if name == "format" and isinstance(value, str):
        check_percent(value, kwargs if kwargs else tuple(rest), what)
    elif name == "replace" and isinstance(value, str):
        refuse_over(_method_size("replace", value, rest, {}), what)
    elif name == "center" and isinstance(value, str):
        refuse_over(max(len(value), _int_args(rest[:1] or [kwargs.get("width", 80)])), what)
    elif name == "indent" and isinstance(value, str):
        pad = kwargs.get("width", rest[0] if rest else 4)
        each = pad if isinstance(pad, int) else text_size(pad)
        refuse_over(len(value) + (value.count("\n") + 1) * each, what)
    elif name == "wordwrap" and isinstance(value, str):
        width = kwargs.get("width", rest[0] if rest else 79)
        wrap = kwargs.get("wrapstring", rest[2] if len(rest) > 2 else "\n")
        lines = min(
            len(value), 2 * len(value) // max(width if isinstance(width, int) else 1, 1) + value.count("\n") + 1
        )
        refuse_over(len(value) + lines * text_size(wrap or "\n"), what)
    elif name in _TEXT_FILTERS:
        measured_text(value, what, nested=name in ("pprint", "sum"))
    elif name in _COLLECTING_FILTERS and not isinstance(value, str | Mapping):
        if isinstance(value, Sized):
            refuse_over(len(value), what)
        else:
            value = counted(value, what)
    return value, rest


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before it runs, `*`, `**`, `+` or `%` that would build a value over the limits."""
    what = f"operator {operator}"
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if size(seq) and isinstance(n, int) and not isinstance(n, bool):
                refuse_over(size(seq) * n, what)
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"an integer over MAX_INT_BITS={MAX_INT_BITS} bits")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
        if left.bit_length() * right > MAX_INT_BITS:
            raise SecurityError(f"an integer over MAX_INT_BITS={MAX_INT_BITS} bits")
    elif operator == "+":
        refuse_over(size(left) + size(right), what)
    elif operator == "%" and isinstance(left, str):
        check_percent(left, right, what)
