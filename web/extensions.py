"""Clients built unbound and attached in init_app, reached through lazy getters."""

from __future__ import annotations

from flask import Flask, current_app, g, request

from tasks.errors import JobNotFound
from tasks.jobs import Batch, Job
from tasks.services import Services
from tasks.settings import Settings


class Pixelmill:
    def init_app(self, app: Flask, settings: Settings) -> None:
        app.extensions["pixelmill"] = Services(settings)

    @property
    def services(self) -> Services:
        return current_app.extensions["pixelmill"]


pixelmill = Pixelmill()


def current_tenant() -> str:
    """The tenant of this request, set by web.auth (the default tenant while auth is off)."""
    return g.get("tenant") or pixelmill.services.settings.default_tenant


def base_url() -> str:
    return request.host_url.rstrip("/")


def fetch_job(job_id: str) -> Job:
    """A job of the current tenant; another tenant's job is simply not found."""
    job = pixelmill.services.store.fetch(job_id)
    if job.tenant != current_tenant():
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def fetch_batch(batch_id: str) -> tuple[Batch, list[Job]]:
    store = pixelmill.services.store
    batch = store.fetch_batch(batch_id)
    if batch.tenant != current_tenant():
        raise JobNotFound(f"no batch with id {batch_id!r}")
    return batch, [store.fetch(job_id) for job_id in batch.job_ids]
