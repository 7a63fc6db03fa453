"""The error every service raises for input it cannot accept.

Views turn it into inline form errors, the API into a 400 naming each field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FieldError:
    field: str
    message: str
    index: int | None = None

    def as_dict(self) -> dict:
        data = {"field": self.field, "message": self.message}
        if self.index is not None:
            data = {"index": self.index, **data}
        return data


class InputError(Exception):
    """Input that cannot be accepted; nothing was written."""

    def __init__(self, errors: list[FieldError], message: str = "The request was not accepted; nothing was written."):
        super().__init__(message)
        self.message = message
        self.errors = errors
