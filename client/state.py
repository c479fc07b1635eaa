"""The resume state of ``pixelmill submit``: one JSON file in ``--out``, written atomically.

Per input (keyed by its source id, checked by the sha256 of its bytes) it records the job
that was submitted for it, the job's last known status and whether its result was saved. A
rerun of the same command reads it back and submits only what was never accepted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

STATE_NAME = ".pixelmill-submit.json"
VERSION = 1
TERMINAL = frozenset({"succeeded", "failed", "blocked", "canceled"})
FAILED = frozenset({"failed", "blocked", "canceled"})
NEW = "new"  # not accepted by the server (yet)
REFUSED = "refused"  # the server refused the upload; tried again on the next run


class StateError(Exception):
    """The state file cannot be used for this run; the message says what to do."""


@dataclass
class Entry:
    source: str  # how the user knows the input
    sha256: str
    target: str  # result path under --out without ".png"
    status: str = NEW
    job_id: str | None = None
    batch_id: str | None = None
    downloaded: bool = False
    reason: str | None = None

    def is_submitted(self) -> bool:
        return self.job_id is not None

    def is_finished(self) -> bool:
        return self.status in TERMINAL

    def is_failure(self) -> bool:
        return self.status in FAILED or self.status == REFUSED

    def reset(self) -> None:
        """Forget the job: the input is submitted again."""
        self.status, self.job_id, self.batch_id, self.downloaded, self.reason = NEW, None, None, False, None


@dataclass
class SubmitState:
    path: Path
    params: dict[str, Any]
    url: str = ""
    entries: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path, *, params: dict[str, Any]) -> SubmitState:
        """The state in ``out`` (a fresh one if there is none). A state written with other
        generation parameters is refused: its results would be mixed with this run's."""
        path = out / STATE_NAME
        if not path.exists():
            return cls(path=path, params=params)
        try:
            raw = json.loads(path.read_text())
            entries = {key: Entry(**value) for key, value in raw["entries"].items()}
            saved_params = raw["params"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StateError(f"cannot read the resume state {path}: {e}; delete it to start over "
                             "(results already in the folder stay)") from e
        for entry in entries.values():  # the file may have been edited: no result may land outside ``out``
            check_target(out, entry.target, state=path)
        if saved_params != params:
            raise StateError(
                f"{out} holds results made with other parameters ({_describe(saved_params)}; now "
                f"{_describe(params)}): use another --out, or delete {path} to start over there")
        return cls(path=path, params=params, url=raw.get("url", ""), entries=entries)

    def save(self) -> None:
        """Write to a temporary file beside the state, then rename it over: a crash or Ctrl-C
        leaves either the old state or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"version": VERSION, "url": self.url, "params": self.params,
                           "entries": {key: asdict(entry) for key, entry in self.entries.items()}},
                          indent=1, sort_keys=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def reserved_targets(self) -> dict[str, str]:
        return {key: entry.target for key, entry in self.entries.items()}


def check_target(out: Path, target: Any, *, state: Path) -> None:
    """``target`` (a result path under ``out``, posix, without ".png") stays inside ``out``: relative,
    no "..", and resolving (symlinks followed) under ``out``; else ``StateError``."""
    problem = None
    if not isinstance(target, str) or not target.strip() or "\x00" in target:
        problem = "an empty or malformed result path"
    elif PurePosixPath(target).is_absolute() or ".." in PurePosixPath(target.replace("\\", "/")).parts:
        problem = f"the result path {target!r} leaves the output folder"
    elif not (out / f"{target}.png").resolve().is_relative_to(out.resolve()):
        problem = f"the result path {target!r} resolves outside the output folder"
    if problem:
        raise StateError(f"the resume state {state} holds {problem} ({out}); it was edited or is not "
                         "pixelmill's: delete it to start over (results already in the folder stay)")


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))
