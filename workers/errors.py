"""Errors raised by the worker engines."""


class EngineError(Exception):
    """An engine could not do what was asked; the message says what the user should change."""


class ModelLoadError(EngineError):
    """A model could not be loaded; the message says which setting to change."""


class Interrupted(EngineError):
    """A generation was stopped early because its progress callback asked to stop."""
