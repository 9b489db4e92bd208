"""Exit codes of the headless command and the exceptions that carry its one-line messages."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class RunError(Exception):
    """A failure to report as one line, with the exit status to use."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class WorkflowError(ValueError):
    """The workflow cannot be converted or overridden; the message is one line for users."""


class UnknownNodeTypeError(WorkflowError):
    """Node types the server does not know (their pack is not installed or failed to load)."""

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing = tuple(missing)
        """(node id, class type) of every node whose type is unknown."""
        self.class_types = tuple(dict.fromkeys(kind for _, kind in self.missing))
        listing = ", ".join(
            f"{kind} (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
            for kind in self.class_types
            for ids in [[nid for nid, k in self.missing if k == kind]]
        )
        super().__init__(f"node types unknown to the server: {listing}")
