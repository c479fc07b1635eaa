"""Webhooks that a receiver can trust (Standard Webhooks): endpoints and their secrets,
signing, turning job events into deliveries, and delivering them from the io queue with
retries, per-job ordering and a dead-letter list.

Modules: ``models`` (dataclasses inside, pydantic at the edges), ``signing``, ``store``
(Redis), ``endpoints`` (create, rotate, subscribe, redeliver), ``dispatch`` (outbox →
deliveries), ``deliver`` (one attempt and what follows it), ``tasks`` (the thin Celery tasks).
"""
