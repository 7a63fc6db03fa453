"""The personalisation sandbox: what a message template may use, and the limits it renders under.

A message is rendered once per recipient, in the workers, and once at save time in the web
process, so a template must not be able to take unbounded time, memory or output. The
engine here knows only an allow-list of Django's tags and filters (``TAGS``, ``FILTERS``);
anything else is refused when the content is saved, naming the tag or filter. At render
time:

- a ``for`` loop runs over at most ``MAX_LOOP_ITEMS`` items, and all the loops of one
  message together at most ``MAX_LOOP_TURNS`` times;
- numeric filter arguments are bounded (``truncatechars`` / ``truncatewords`` 0–1000,
  ``floatformat`` at most 10 decimal places), whether written in the template or read from
  a customer's attributes;
- each field's output is bounded (the caller gives the size) and the whole message must
  render within ``RENDER_SECONDS``.

Going over a limit raises :class:`RenderProblem` with a sentence a marketer can act on.
"""

from __future__ import annotations

import functools
import re
import time
from functools import lru_cache

from django.template import Context, Engine, Library, Node, NodeList, TemplateSyntaxError
from django.template import defaultfilters, defaulttags
from django.template.base import Lexer, TokenType, Variable, filter_re

MAX_LOOP_ITEMS = 100
MAX_LOOP_TURNS = 1000
RENDER_SECONDS = 0.5
MAX_TRUNCATE = 1000
MAX_DECIMALS = 10

# Block tags a template may use, and the words that continue or close them.
TAGS = {
    "if": ("elif", "else", "endif"),
    "for": ("empty", "endfor"),
    "with": ("endwith",),
    "firstof": (),
    "now": (),
    "comment": ("endcomment",),
    "spaceless": ("endspaceless",),
}
TAG_WORDS = set(TAGS) | {word for words in TAGS.values() for word in words}


class RenderProblem(ValueError):
    """A template went over a limit of the sandbox, or cannot handle a customer's values."""


def _whole_number(name: str, low: int, high: int):
    def check(arg) -> None:
        try:
            number = int(str(arg).strip())
        except ValueError:
            raise RenderProblem(f"{name} takes a whole number from {low} to {high}, not '{arg}'") from None
        if not low <= number <= high:
            raise RenderProblem(f"{name} takes a whole number from {low} to {high}, not {number}")

    return check


def _decimals(arg) -> None:
    digits = str(arg).strip().rstrip("gu")
    try:
        places = int(digits) if digits else 0
    except ValueError:
        raise RenderProblem(f"floatformat takes a number of decimal places, not '{arg}'") from None
    if abs(places) > MAX_DECIMALS:
        raise RenderProblem(f"floatformat shows at most {MAX_DECIMALS} decimal places, not {places}")


# Filters a template may use; the value is a check of the filter's argument, or None.
FILTERS = {
    "add": None,
    "capfirst": None,
    "cut": None,
    "date": None,
    "default": None,
    "default_if_none": None,
    "divisibleby": None,
    "first": None,
    "floatformat": _decimals,
    "join": None,
    "last": None,
    "length": None,
    "linebreaksbr": None,
    "lower": None,
    "pluralize": None,
    "slice": None,
    "striptags": None,
    "time": None,
    "title": None,
    "truncatechars": _whole_number("truncatechars", 0, MAX_TRUNCATE),
    "truncatewords": _whole_number("truncatewords", 0, MAX_TRUNCATE),
    "upper": None,
    "urlencode": None,
    "wordcount": None,
    "yesno": None,
}


# --- The library the engine is limited to --------------------------------------------------

register = Library()


def _checked(name: str, func, check):
    # functools.wraps keeps the filter's flags and lets Django count its arguments.
    @functools.wraps(func)
    def checked(value, *args, **kwargs):
        if args:
            check(args[0])
        return func(value, *args, **kwargs)

    return checked


for _name, _check in FILTERS.items():
    _func = defaultfilters.register.filters[_name]
    register.filters[_name] = _checked(_name, _func, _check) if _check else _func


class _Budget:
    """What one message may still spend: loop turns, output characters, time."""

    def __init__(self, *, deadline: float):
        self.deadline = deadline
        self.turns = 0
        self.chars = 0
        self.max_chars = 0

    def turn(self) -> None:
        self.turns += 1
        if self.turns > MAX_LOOP_TURNS:
            raise RenderProblem(f"the loops run more than {MAX_LOOP_TURNS} times in all")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderProblem(f"the message takes longer than {RENDER_SECONDS:g} s to render")

    def spend(self, chars: int) -> None:
        self.chars += chars
        if self.max_chars and self.chars > self.max_chars:
            raise RenderProblem(f"the text would be longer than {self.max_chars:,} characters")


def _budget(context) -> _Budget | None:
    return getattr(context, "message_budget", None)


class _LoopTurn(Node):
    """First node of every loop body: counts the turn against the message's budget."""

    def render(self, context):
        budget = _budget(context)
        if budget:
            budget.turn()
        return ""


class _Measured(Node):
    """A node inside a loop body, whose output counts against the field's size as it grows."""

    child_nodelists = ("nodelist",)

    def __init__(self, node):
        self.nodelist = NodeList([node])
        self.token = getattr(node, "token", None)

    def render(self, context):
        budget = _budget(context)
        before = budget.chars if budget else 0
        output = self.nodelist[0].render_annotated(context)
        if budget:
            # Loops nested inside counted their own output already.
            budget.spend(len(output) - (budget.chars - before))
        return output


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


class _LoopSequence:
    """What a loop iterates over: a list, an object's keys or text, of a bounded length."""

    def __init__(self, expression):
        self.expression = expression

    def resolve(self, context, ignore_failures=False):
        values = self.expression.resolve(context, ignore_failures=ignore_failures)
        if values is None or values == "":
            return values
        if not isinstance(values, (list, tuple, dict, str)):
            raise RenderProblem(f"{{% for %}} needs a list, and {self.expression.token} is {_kind(values)}")
        if len(values) > MAX_LOOP_ITEMS:
            raise RenderProblem(
                f"{{% for %}} runs over at most {MAX_LOOP_ITEMS} items, and {self.expression.token} has {len(values):,}"
            )
        return values


@register.tag("for")
def bounded_for(parser, token):
    node = defaulttags.do_for(parser, token)
    node.sequence = _LoopSequence(node.sequence)
    node.nodelist_loop = NodeList([_LoopTurn(), *(_Measured(child) for child in node.nodelist_loop)])
    return node


for _tag in TAGS:
    if _tag != "for":
        register.tags[_tag] = defaulttags.register.tags[_tag]


class _MessageEngine(Engine):
    # Only this module's library: no default tags or filters, no loaders.
    default_builtins = []


@lru_cache(maxsize=1)
def engine() -> Engine:
    return _MessageEngine(dirs=[], app_dirs=False, loaders=[], libraries={}, builtins=[__name__],
                          string_if_invalid="")


# --- Checking a template before it is compiled ---------------------------------------------

ATTRIBUTE = re.compile(r"\battributes\.(\w+)")


def _available(kind: str, names) -> str:
    return f"available {kind}s: {', '.join(sorted(names))}"


def _check_filters(expression: str) -> None:
    for match in filter_re.finditer(expression):
        name = match.group("filter_name")
        if not name:
            continue
        if name not in FILTERS:
            raise RenderProblem(f"the '{name}' filter is not available in messages; {_available('filter', FILTERS)}")
        check = FILTERS[name]
        constant = match.group("constant_arg")
        if constant is None:
            # Not written down here: a number read from a customer is checked as it renders.
            constant = match.group("var_arg")
            if constant is None or not re.fullmatch(r"[-+]?\d+", constant):
                continue
        if check:
            check(Variable(constant).resolve({}))


def check_source(source: str) -> None:
    """Refuse tags and filters outside the allow-list, and out-of-range arguments written in
    the template; raises :class:`RenderProblem` naming the first one."""
    in_comment = False
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.BLOCK:
            bits = token.split_contents()
            tag = bits[0] if bits else ""
            if in_comment:
                in_comment = tag != "endcomment"
                continue
            if tag not in TAG_WORDS:
                raise RenderProblem(f"the '{tag}' tag is not available in messages; {_available('tag', TAGS)}")
            in_comment = tag == "comment"
            for bit in bits[1:]:
                # ``{% with name=value %}``: only the value can carry filters.
                _check_filters(bit.split("=", 1)[1] if re.match(r"^\w+=", bit) else bit)
        elif token.token_type == TokenType.VAR and not in_comment:
            _check_filters(token.contents)


def attributes_read(source: str) -> set[str]:
    """The ``attributes.<key>`` names a template reads."""
    keys = set()
    for token in Lexer(source).tokenize():
        if token.token_type in (TokenType.VAR, TokenType.BLOCK):
            keys.update(ATTRIBUTE.findall(token.contents))
    return keys


def compile_template(source: str):
    """Check and compile one template; raises :class:`RenderProblem` or ``TemplateSyntaxError``."""
    check_source(source)
    return engine().from_string(source)


# --- Rendering ------------------------------------------------------------------------------


def message_budget() -> _Budget:
    """The allowance of one message, shared by its fields: start one per recipient."""
    return _Budget(deadline=time.monotonic() + RENDER_SECONDS)


def render(template, values: dict, *, autoescape: bool, max_chars: int, budget: _Budget) -> str:
    """Render ``template`` with ``values``; HTML-escapes them only with ``autoescape``.

    Raises :class:`RenderProblem` when the output would pass ``max_chars`` characters or the
    message passes its ``budget`` of loop turns and time.
    """
    context = Context(values, autoescape=autoescape)
    budget.chars, budget.max_chars = 0, max_chars
    context.message_budget = budget
    try:
        output = template.render(context)
    except TemplateSyntaxError as exc:  # raised by some tags as they render, e.g. {% now %}
        raise RenderProblem(str(exc)) from None
    if len(output) > max_chars:
        raise RenderProblem(f"the text would be {len(output):,} characters; at most {max_chars:,}")
    budget.check_time()
    return output
