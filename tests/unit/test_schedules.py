"""PIXELMILL_SCHEDULES: checked with clear errors, turned into Celery beat entries (crontab from the
five cron fields, a timedelta for every_s), and the names results get in the output folder."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab

from tasks.schedules import RUN_TASK, beat_schedule, parse_schedules, result_names
from tasks.settings import Settings

BASE = {"folder": "/srv/in", "out": "/srv/out", "params": {"style": "sketch", "size": 64}}


def test_schedules_become_beat_entries_on_the_io_queue():
    settings = Settings(schedules=[{"name": "often", "every_s": 2, **BASE},
                                   {"name": "nightly", "cron": "30 2 * * 1-5", **BASE,
                                    "webhook_url": "https://hooks.example.com/x"}])
    entries = beat_schedule(settings)
    assert set(entries) == {"schedule:often", "schedule:nightly"}
    often, nightly = entries["schedule:often"], entries["schedule:nightly"]
    assert often["task"] == RUN_TASK and often["options"] == {"queue": "io"}
    assert often["schedule"] == timedelta(seconds=2)
    assert nightly["schedule"] == crontab(minute="30", hour="2", day_of_week="1-5")
    assert nightly["kwargs"]["spec"]["webhook_url"] == "https://hooks.example.com/x"  # the run gets it all


def test_schedules_from_the_environment_are_json(monkeypatch):
    monkeypatch.setenv("PIXELMILL_SCHEDULES", '[{"name": "a", "every_s": 60, "folder": "/in", "out": "/out"}]')
    assert Settings().schedules[0]["name"] == "a"


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", **BASE}, "exactly one of cron and every_s"),
    ({"name": "x", "cron": "* * * * *", "every_s": 5, **BASE}, "exactly one of cron and every_s"),
    ({"name": "x", "cron": "*/5 * * *", **BASE}, "needs 5 fields"),
    ({"name": "x", "cron": "61 * * * *", **BASE}, "61"),
    ({"name": "x", "every_s": 0.2, **BASE}, "greater than or equal to 1"),
    ({"name": "x", "every_s": 5, **{**BASE, "params": {"style": "nope"}}}, "style"),
    ({"name": "x y", "every_s": 5, **BASE}, "name"),
    ({"name": "x", "every_s": 5, "folder": "/in"}, "out"),
])
def test_a_bad_schedule_is_named_with_what_is_wrong(entry, message):
    with pytest.raises(ValueError, match=r"PIXELMILL_SCHEDULES\[0\]") as error:
        parse_schedules([entry])
    assert message in str(error.value)


def test_two_schedules_may_not_share_a_name():
    with pytest.raises(ValueError, match="already named 'a'"):
        parse_schedules([{"name": "a", "every_s": 5, **BASE}, {"name": "a", "every_s": 9, **BASE}])


def test_results_are_named_by_stem_unless_two_inputs_share_it():
    assert result_names(["a.jpg", "b.webp", "a.PNG", "c.png"]) == {
        "a.jpg": "a.jpg.png", "b.webp": "b.png", "a.PNG": "a.PNG.png", "c.png": "c.png"}
