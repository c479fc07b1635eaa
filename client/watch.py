"""``pixelmill watch``: a hot folder. Every image that appears in the folder (or below it) is
submitted once, after it stopped changing — its size and mtime the same for ``settle_s`` — and
its result is downloaded to ``--out`` (default ``DIR/results``), mirroring the folder's layout.

It is ``pixelmill submit`` run in a loop: each round hands the settled files to a ``SubmitRun``
(client/submit.py) that submits the new ones and downloads what finished, with the same resume
state in ``--out``. So a restarted watcher submits nothing twice: an input whose bytes are already
in the state is polled (or skipped when its result is saved), and only new or changed files are
sent. A file the server refused, or whose job failed, is tried again only when it changes.
The watcher never gives up on a server that is down: it says so and keeps trying.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.http import ApiClient, ApiError, ServerUnreachable
from client.inputs import IMAGE_SUFFIXES, folder_files
from client.report import Reporter
from client.state import REFUSED, StateError, SubmitState
from client.submit import EXIT_INTERRUPTED, EXIT_USAGE, Abort, SubmitOptions, SubmitRun

_SKIPPED_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class WatchOptions:
    folder: Path
    submit: SubmitOptions  # url, params, out, api key, batch size
    settle_s: float = 2.0
    interval_s: float = 1.0


class Settler:
    """The image files under a folder whose size and mtime have not changed for ``settle_s``
    (as this process saw them: after a restart a file settles again before it is used)."""

    def __init__(self, folder: Path, *, exclude: Path | None, settle_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.exclude = exclude.resolve() if exclude is not None else None
        self.settle_s = settle_s
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}  # path → (size, mtime), unchanged since

    def scan(self) -> list[Path]:
        now = self.clock()
        current: dict[Path, tuple[tuple[int, int], float]] = {}
        for path in self._images():
            try:
                stat = path.stat()
            except OSError:  # gone between the listing and now
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            previous = self._seen.get(path)
            current[path] = (signature, previous[1] if previous and previous[0] == signature else now)
        self._seen = current
        return sorted(path for path, (_, since) in current.items() if now - since >= self.settle_s)

    def _images(self) -> list[Path]:
        found = []
        for root, dirs, files in os.walk(self.folder):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS
                             and (self.exclude is None or (root_path / d).resolve() != self.exclude))
            found += [root_path / name for name in files
                      if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
        return found


def run_watch(options: WatchOptions) -> int:
    """The whole command, until Ctrl-C or SIGTERM (exit 130 after saving the state)."""
    folder, out = options.folder, options.submit.out
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        state = SubmitState.load(out, params=options.submit.params)
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    state.url = options.submit.url
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
    client = ApiClient(options.submit.url, api_key=options.submit.api_key)
    try:
        return _watch(options, client=client, state=state)
    except KeyboardInterrupt:
        state.save()
        print(f"stopped; the state is in {state.path}: run the same command to carry on (nothing is "
              "submitted twice)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        client.close()
        signal.signal(signal.SIGTERM, previous)


def _watch(options: WatchOptions, *, client: ApiClient, state: SubmitState) -> int:
    try:
        client.check()
    except ServerUnreachable as e:
        print(f"{e}; watching anyway, submitting once it answers", flush=True)
    except ApiError as e:
        if e.status < 500:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    out = options.submit.out
    settler = Settler(options.folder, exclude=out, settle_s=options.settle_s)
    hashed: dict = {}
    print(f"watching {options.folder} (a file is submitted once it has not changed for {options.settle_s:g} s); "
          f"results in {out}/ (state: {state.path}); Ctrl-C stops", flush=True)
    carried: SubmitRun | None = None
    while True:
        inputs = []
        try:
            inputs = folder_files(options.folder, settler.scan(), reserved=state.reserved_targets(), hashed=hashed)
        except OSError as e:  # a file vanished or became unreadable while it was hashed: next round
            print(f"{e}; trying again", flush=True)
        # a refused file (or a failed job) is tried again when its bytes change, not every round
        inputs = [i for i in inputs if not _is_settled_refusal(state, i.source_id, i.sha256)]
        run = SubmitRun(options=options.submit, client=client, state=state, inputs=inputs, unreadable=[])
        run.reporter = Reporter(total=len(inputs), ok=0, failed=0, bar=False)
        _carry(carried, run)
        try:
            run.pump()
        except Abort as e:
            if run.down_since is None:  # the server refused us (4xx): nothing a retry would change
                print(f"error: {e}", file=sys.stderr)
                state.save()
                return e.code
            print(f"{e}; still watching", flush=True)  # down for long: keep trying
            run.down_since = time.monotonic()
        carried = run
        time.sleep(options.interval_s)


def _is_settled_refusal(state: SubmitState, source_id: str, sha256: str) -> bool:
    entry = state.entries.get(source_id)
    return entry is not None and entry.sha256 == sha256 and entry.status == REFUSED


def _carry(previous: SubmitRun | None, run: SubmitRun) -> None:
    """What one round learned about the server, for the next: its limits and when to try again."""
    if previous is None:
        return
    run.max_files, run.max_bytes = previous.max_files, previous.max_bytes
    run.hold_until, run.next_poll, run.poll_interval = previous.hold_until, previous.next_poll, previous.poll_interval
    run.down_since = previous.down_since
