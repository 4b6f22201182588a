"""`expect_error`: show the learner an error, and fail the cell when the error does not happen.

A notebook cell that demonstrates an error with a bare try/except passes silently once the error
stops happening (a library changed, a check of ours was lost), and the prose above it then lies.
`with expect_error(Kind):` prints the error's kind and message as the except clause did, and raises
AssertionError when the block ends without raising `Kind`. Any other exception propagates untouched.
"""

from __future__ import annotations

import re
from typing import Callable


class expect_error:  # noqa: N801 - used as `with expect_error(...)`, like pytest.raises
    """Context manager: the block must raise `kind` (a class or a tuple of classes).

    match: a regular expression the error's message must contain (re.search).
    label: printed before the error, e.g. what was wrong with the input.
    show:  how to turn the error into the printed text (default: str(error)); `width` cuts it.
    The caught error is kept as `.error`, so a cell can look further (status codes, causes).
    """

    def __init__(self, kind, match: str | None = None, *, label: str | None = None,
                 show: Callable[[BaseException], str] | None = None, width: int | None = 300):
        self.kind = kind
        self.match = match
        self.label = label
        self.show = show
        self.width = width
        self.error: BaseException | None = None

    def _names(self) -> str:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return " or ".join(k.__name__ for k in kinds)

    def __enter__(self) -> "expect_error":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        where = f" ({self.label})" if self.label else ""
        if exc_type is None:
            raise AssertionError(f"Expected {self._names()} to be raised{where}, but the code ran without an error.")
        if not issubclass(exc_type, self.kind):
            return False  # a different error: let it surface with its own traceback
        if self.match is not None and not re.search(self.match, str(exc)):
            raise AssertionError(f"{exc_type.__name__} was raised{where}, but its message does not match "
                                 f"{self.match!r}: {exc}") from exc
        self.error = exc
        text = self.show(exc) if self.show is not None else str(exc)
        if self.width is not None and len(text) > self.width:  # cut between words, never inside one
            cut = text.rfind(" ", 0, self.width - 4)
            text = text[: cut if cut > 0 else self.width - 4].rstrip(" ,;:") + " ..."
        print(f"{self.label + ': ' if self.label else ''}{exc_type.__name__}: {text}")
        return True  # the error was the point of the cell: swallow it
