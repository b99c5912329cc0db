"""Errors that carry a message meant for the user.

The UI boundary (``tabs/``) turns every ``StudioError`` into ``gr.Error`` with the same message;
Gradio hides the text of any other exception from API clients, so every failure a user can fix must
be one of these.
"""

from __future__ import annotations


class StudioError(Exception):
    """A failure whose message is written for the user and says how to fix it."""


class InputError(StudioError, ValueError):
    """A request field is invalid.

    Args:
        field: the public name of the input (as in DESIGN.md's API table), e.g. ``"width"``.
        message: what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        #: What is wrong and what is allowed, without the field's name.
        self.detail = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickle by field and message (``--cluster`` sends errors from the replicas back to the app)."""
        return type(self), (self.field, self.detail)


class UnknownNameError(StudioError, KeyError):
    """A backend, task, preset or model name is not known; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutOfMemory(StudioError):
    """The device ran out of memory even after the manager's retry in a lower memory mode."""


class ModelUnavailable(StudioError):
    """Model files are missing locally (offline) or could not be fetched."""


class Cancelled(StudioError):
    """The user pressed Stop; raised from the progress callback at the next step."""
