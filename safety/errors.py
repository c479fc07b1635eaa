"""Exceptions raised by the safety layer."""

from __future__ import annotations


class SafetyError(Exception):
    """Base class for every refusal or failure raised by the safety layer."""


class InputRejected(SafetyError):
    """An upload was refused; `code` is machine-readable, str(self) says what to fix."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"InputRejected(code={self.code!r}, message={self.message!r}, status={self.status})"
