"""The beat process: Celery beat firing the scheduled batches of PIXELMILL_SCHEDULES
(tasks/schedules.py). ``pixelmill beat`` runs ``celery -A tasks.beat beat``: only this process
needs the schedule; the io workers run what it sends. Run exactly one beat per deployment, or
every firing happens once per beat."""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.celery_app import app
from tasks.schedules import beat_schedule
from tasks.settings import Settings, get_settings

app.conf.beat_schedule = beat_schedule(get_settings())

SCHEDULE_FILE = "celerybeat-schedule"  # beat's record of when each entry last ran, in data_dir


def beat_argv(settings: Settings, *, loglevel: str = "INFO") -> list[str]:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "celery", "-A", "tasks.beat", "beat", "--loglevel", loglevel,
            "--schedule", str(data_dir / SCHEDULE_FILE)]
