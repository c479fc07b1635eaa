"""Errors of the job layer. Each carries a machine-readable code and a message a user can act on."""

from __future__ import annotations


class PixelmillError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code
        if status:
            self.status = status


class JobNotFound(PixelmillError):
    code = "not_found"
    status = 404


class InvalidTransition(PixelmillError):
    code = "invalid_transition"
    status = 409
