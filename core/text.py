"""Words for people: counts with their nouns, and messages as sentences."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """``noun`` as it goes with ``count``: as given for exactly one, with an "s" otherwise."""
    return noun if count == 1 else noun + "s"


def counted(count: int, noun: str) -> str:
    """``count`` with thousands separators and its noun: "1 member", "1,204 members"."""
    return f"{count:,} {plural(count, noun)}"


def sentence(message: str) -> str:
    """A message as a sentence: trimmed, a capital first letter, and a full stop unless it
    already ends with one, "!" or "?". An empty message stays empty."""
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."
