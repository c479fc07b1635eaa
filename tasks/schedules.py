"""Scheduled batches: the schedules of PIXELMILL_SCHEDULES, the beat entries that fire them
(tasks/beat.py runs them in `pixelmill beat`) and the two io-queue tasks of a run.

A schedule is ``{"name", "cron": "*/5 * * * *" | "every_s": 300, "folder", "out", "params",
"webhook_url" (optional), "tenant" (optional)}``; ``folder`` and ``out`` are paths on the io worker's
machine. Each firing (``pixelmill.schedule.run``):

1. skips the firing while the schedule's previous run is still going (one run at a time);
2. takes the images at the top of ``folder`` (png, jpg, jpeg, webp; hidden files skipped) whose
   result in ``out`` is missing or older than the image, at most ``max_batch_files`` of them (the
   rest go in the next run); nothing to do, no batch;
3. submits them as one batch of ``params`` (tasks.submit.submit_batch) for the tenant, with its own
   webhook subscription to ``webhook_url`` when there is one (as an API batch's ``webhook_url``);
   a file the upload checks refuse is logged and left out;
4. checks the batch (``pixelmill.schedule.collect``, re-enqueued with a countdown) until every job
   is terminal, then writes each succeeded result to ``out/<input stem>.png`` (``<name>.png`` when
   two inputs share a stem). Failed and blocked images get no file; the batch in the API says why.

The schedule travels inside the beat message, so an io worker needs no PIXELMILL_SCHEDULES.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safety.errors import InputRejected
from tasks.celery_app import app
from tasks.errors import JobNotFound, PixelmillError
from tasks.jobs import JobParams
from tasks.services import Services, get_services
from tasks.settings import Settings
from tasks.store import store_key
from tasks.submit import Upload, submit_batch
from tasks.webhooks import endpoints
from tasks.webhooks.models import SubscriptionRequest

log = logging.getLogger(__name__)

RUN_TASK = "pixelmill.schedule.run"
COLLECT_TASK = "pixelmill.schedule.collect"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
STARTING = "starting"  # the running key's value while a run submits (then: its batch id)
STARTING_TTL_S = 600
CHECK_MIN_S = 1.0
CHECK_MAX_S = 15.0
_CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


class ScheduleSpec(BaseModel):
    """One entry of PIXELMILL_SCHEDULES."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    cron: str | None = Field(None, description='five fields: "minute hour day-of-month month day-of-week"')
    every_s: float | None = Field(None, ge=1)
    folder: str = Field(min_length=1)
    out: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = None
    tenant: str | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give exactly one of cron and every_s")
        self.schedule()  # a bad cron field fails here, with celery's message
        JobParams.model_validate(self.params)
        return self

    def schedule(self):
        if self.every_s is not None:
            return timedelta(seconds=self.every_s)
        from celery.schedules import crontab

        fields = (self.cron or "").split()
        if len(fields) != 5:
            raise ValueError(f"cron {self.cron!r} needs 5 fields (minute hour day-of-month month day-of-week)")
        return crontab(**dict(zip(_CRON_FIELDS, fields, strict=True)))


def parse_schedules(raw: list[dict[str, Any]]) -> list[ScheduleSpec]:
    """PIXELMILL_SCHEDULES, checked: ValueError names the schedule and what is wrong with it."""
    specs, names = [], set()
    for i, item in enumerate(raw):
        label = f"PIXELMILL_SCHEDULES[{i}]" + (f" ({item.get('name')})" if isinstance(item, dict) else "")
        try:
            spec = ScheduleSpec.model_validate(item)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'schedule'}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{label}: {problems}") from e
        if spec.name in names:
            raise ValueError(f"{label}: another schedule is already named {spec.name!r}")
        names.add(spec.name)
        specs.append(spec)
    return specs


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: one entry per schedule, sent to the io queue."""
    from tasks.webhooks.tasks import io_queue

    return {f"schedule:{spec.name}": {"task": RUN_TASK, "schedule": spec.schedule(),
                                      "kwargs": {"spec": spec.model_dump()},
                                      "options": {"queue": io_queue(settings)}}
            for spec in parse_schedules(settings.schedules)}


# --- a run ------------------------------------------------------------------------------------

def running_key(name: str) -> str:
    return store_key("schedule", name, "running")


@app.task(name=RUN_TASK, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def run_schedule(spec: dict[str, Any]) -> str | None:
    rt = get_services()
    schedule = ScheduleSpec.model_validate(spec)
    try:
        batch_id = start_run(rt, schedule)
    except PixelmillError as e:  # refused as an API submission would be (rate limit, unknown model, …)
        log.error("schedule %s: the run was refused: %s", schedule.name, e)
        return None
    if batch_id is not None:
        enqueue_collect(rt.settings, spec, batch_id, checks=0)
    return batch_id


@app.task(name=COLLECT_TASK, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def collect(spec: dict[str, Any], batch_id: str, checks: int = 0) -> None:
    rt = get_services()
    schedule = ScheduleSpec.model_validate(spec)
    if not collect_run(rt, schedule, batch_id):
        enqueue_collect(rt.settings, spec, batch_id, checks=checks + 1)


def enqueue_collect(settings: Settings, spec: dict[str, Any], batch_id: str, *, checks: int) -> None:
    from tasks.webhooks.tasks import io_queue

    countdown = min(CHECK_MIN_S * 1.25 ** checks, CHECK_MAX_S)
    collect.apply_async((spec, batch_id, checks), queue=io_queue(settings), countdown=countdown)


def start_run(rt: Services, spec: ScheduleSpec) -> str | None:
    """Submit the folder's new images as one batch; its id, or None when nothing was submitted."""
    key = running_key(spec.name)
    if not rt.redis.set(key, STARTING, nx=True, ex=STARTING_TTL_S):
        holder = _text(rt.redis.get(key))
        # A finished run whose collecting was lost (its worker died between submitting and enqueuing
        # the first check) is collected here, so that it cannot hold the schedule up.
        finished = holder not in (None, STARTING) and collect_run(rt, spec, holder)
        if not finished or not rt.redis.set(key, STARTING, nx=True, ex=STARTING_TTL_S):
            log.info("schedule %s: the previous run (%s) is still going; this one is skipped", spec.name, holder)
            return None
    try:
        batch_id = _submit(rt, spec)
    except BaseException:
        rt.redis.delete(key)
        raise
    if batch_id is None:
        rt.redis.delete(key)
    else:
        rt.redis.set(key, batch_id, ex=rt.settings.job_ttl_s)
    return batch_id


def _submit(rt: Services, spec: ScheduleSpec) -> str | None:
    folder, out = Path(spec.folder), Path(spec.out)
    if not folder.is_dir():
        log.error("schedule %s: %s is not a folder on this io worker; nothing submitted", spec.name, folder)
        return None
    images = folder_images(folder)
    names = result_names([path.name for path in images])
    pending = [path for path in images if _needs_result(path, out / names[path.name])][: rt.settings.max_batch_files]
    if not pending:
        log.info("schedule %s: no new images in %s", spec.name, folder)
        return None
    uploads = [Upload(name=path.name, data=path.read_bytes()) for path in pending]
    tenant = spec.tenant or rt.settings.default_tenant
    params = JobParams.model_validate(spec.params)
    while uploads:
        subscribed = _subscribe(rt, spec, tenant=tenant)
        try:
            batch, jobs = submit_batch(rt, tenant=tenant, uploads=uploads, params=params,
                                       webhook=subscribed.subscription if subscribed else None)
        except InputRejected as e:  # names the file: leave it out, send the rest
            if subscribed is not None:
                endpoints.abandon(rt.webhooks, subscribed)
            refused = next((u for u in uploads if str(e).startswith(f"{u.name}: ")), None)
            if refused is None:
                raise
            log.warning("schedule %s: %s", spec.name, e)
            uploads = [u for u in uploads if u is not refused]
            continue
        except BaseException:
            if subscribed is not None:
                endpoints.abandon(rt.webhooks, subscribed)
            raise
        log.info("schedule %s: batch %s of %d image(s) from %s", spec.name, batch.id, len(jobs), folder)
        return batch.id
    return None


def _subscribe(rt: Services, spec: ScheduleSpec, *, tenant: str) -> endpoints.Subscribed | None:
    if not spec.webhook_url:
        return None
    subscribed = endpoints.subscribe(rt.webhooks, rt.settings, tenant=tenant,
                                     request=SubscriptionRequest(url=spec.webhook_url))
    if subscribed.secret is not None:
        log.warning("schedule %s: created webhook endpoint %s for %s; to verify its signatures, get a secret "
                    "with POST /api/v1/webhooks/%s/rotate (or create the endpoint yourself first: "
                    "POST /api/v1/webhooks)", spec.name, subscribed.endpoint.id, spec.webhook_url,
                    subscribed.endpoint.id)
    return subscribed


def collect_run(rt: Services, spec: ScheduleSpec, batch_id: str) -> bool:
    """Write the results of a finished run to ``out``; False while some job is still running."""
    key = running_key(spec.name)
    try:
        batch = rt.store.fetch_batch(batch_id)
        jobs = [rt.store.fetch(job_id) for job_id in batch.job_ids]
    except JobNotFound as e:
        log.error("schedule %s: batch %s is gone (%s); its results are lost", spec.name, batch_id, e)
        _release(rt, key, batch_id)
        return True
    if not all(job.status.is_terminal() for job in jobs):
        rt.redis.expire(key, rt.settings.job_ttl_s)
        return False
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    names = result_names([job.input_name for job in jobs])
    written = 0
    for job in jobs:
        if job.status.value == "succeeded" and job.outputs.get("result"):
            _write(out / names[job.input_name], rt.blobs.fetch(job.outputs["result"]))
            written += 1
        else:
            log.warning("schedule %s: %s %s in batch %s", spec.name, job.input_name, job.status.value, batch_id)
    log.info("schedule %s: batch %s done: %d of %d result(s) written to %s", spec.name, batch_id, written,
             len(jobs), out)
    _release(rt, key, batch_id)
    return True


def _release(rt: Services, key: str, batch_id: str) -> None:
    if _text(rt.redis.get(key)) == batch_id:
        rt.redis.delete(key)


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def result_names(names: list[str]) -> dict[str, str]:
    """Input name → result file name: ``<stem>.png``, or ``<name>.png`` for a stem two inputs share."""
    stems: dict[str, int] = {}
    for name in names:
        stems[Path(name).stem.casefold()] = stems.get(Path(name).stem.casefold(), 0) + 1
    return {name: f"{Path(name).stem if stems[Path(name).stem.casefold()] == 1 else name}.png" for name in names}


def _needs_result(path: Path, result: Path) -> bool:
    try:
        return result.stat().st_mtime < path.stat().st_mtime
    except FileNotFoundError:
        return True


def _write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value

