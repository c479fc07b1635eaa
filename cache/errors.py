"""Errors of the cache package. Lookups never raise for a Redis fault (the cache is then a
miss); these are for misuse and misconfiguration, which should be loud."""

from __future__ import annotations


class CacheError(Exception):
    """Base class for cache errors."""


class CacheConfigError(CacheError, ValueError):
    """A cache setting is out of range or inconsistent; the message names the setting."""


class BadCacheEntry(CacheError):
    """A stored entry could not be decoded (a different format or a corrupt value)."""
