"""``pixelmill submit``: upload files, folders and zip archives as batches, optionally wait,
download each result as soon as its job ends, and resume after an interruption.

Why batches and not one job per file: the API counts one batch as one submission against
the tenant's per-minute rate limit (one job per file would hit it at 60 files), validates a
whole batch in one request, and gives one status endpoint for up to ``max_batch_files`` jobs,
so waiting on N images costs one GET per batch instead of N. The price: the API refuses a
whole batch when one file in it is bad. The refusal names the file, so it is taken out,
reported with the server's message, and the rest of the chunk is sent again.

Chunks stay under ``--batch-size`` files and ``MAX_REQUEST_BYTES``; when the server says its
limits are lower (400 "at most N per batch", 413 too large) the chunks shrink to fit.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.http import ApiClient, ApiError, ServerUnreachable
from client.inputs import IMAGE_SUFFIXES, Input, InputError, Unreadable, collect_inputs
from client.report import Reporter, failure_table
from client.state import NEW, REFUSED, STATE_NAME, TERMINAL, Entry, StateError, SubmitState

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # well under the server's default max_request_bytes (200 MiB)
PATIENCE_S = 120.0  # how long a lost connection is retried before giving up (a rerun resumes)
POLL_MIN_S = 0.5
POLL_MAX_S = 5.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_BATCH_SUFFIX = " (nothing in this batch was queued)"


@dataclass(frozen=True)
class SubmitOptions:
    url: str
    params: dict[str, Any]
    out: Path
    api_key: str | None = None
    wait: bool = False
    progress: bool = True
    batch_size: int = 100
    retry_failed: bool = False
    resume_command: str = "the same command"


class Abort(Exception):
    """Stop the run with this exit code and message (the state is saved first)."""

    def __init__(self, message: str, *, code: int, resumable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.resumable = resumable


def run_submit(paths: list[Path], *, options: SubmitOptions) -> int:
    """The whole command; returns its exit code."""
    try:
        state = SubmitState.load(options.out, params=options.params)
        inputs, unreadable = collect_inputs(paths, exclude=options.out, reserved=state.reserved_targets())
    except (InputError, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted while reading the inputs; nothing was submitted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not inputs and not unreadable:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        print(f"error: no images found in {', '.join(map(str, paths))} (looked for {kinds} files, "
              "in folders recursively and inside .zip archives)", file=sys.stderr)
        return EXIT_USAGE
    client = ApiClient(options.url, api_key=options.api_key)
    try:
        client.check()
    except (ServerUnreachable, ApiError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    run = SubmitRun(options=options, client=client, state=state, inputs=inputs, unreadable=unreadable)
    try:
        return run.run()
    except KeyboardInterrupt:
        run.stop()
        print(run.resume_message("interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        client.close()


class SubmitRun:
    def __init__(self, *, options: SubmitOptions, client: ApiClient, state: SubmitState, inputs: list[Input],
                 unreadable: list[Unreadable]) -> None:
        self.options = options
        self.client = client
        self.state = state
        self.inputs = {i.source_id: i for i in inputs}
        self.unreadable = unreadable
        self.entries = {i.source_id: self._entry_for(i) for i in inputs}
        self.to_submit = deque(key for key, e in self.entries.items() if e.status == NEW)
        self.max_files = max(1, options.batch_size)
        self.max_bytes = MAX_REQUEST_BYTES
        self.hold_until = 0.0  # no submission before (rate limited, server busy)
        self.next_poll = 0.0
        self.poll_interval = POLL_MIN_S
        self.down_since: float | None = None
        self.batches_sent = 0
        self.state.url = options.url
        self.reporter: Reporter | None = None

    # --- the run -------------------------------------------------------------------------

    def run(self) -> int:
        total = len(self.entries) + len(self.unreadable)
        ok = sum(1 for e in self.entries.values() if e.status == "succeeded" and e.downloaded)
        failed = sum(1 for e in self.entries.values() if e.is_failure()) + len(self.unreadable)
        self.reporter = Reporter(total=total, ok=ok, failed=failed, bar=self.options.wait and self.options.progress)
        self._plan(ok=ok, failed=failed)
        for item in self.unreadable:
            self.reporter.say(f"{item.display}: skipped: {item.reason}")
        self.state.save()
        try:
            self._loop()
        except Abort as e:
            self.stop()
            message = f"error: {e}"
            if e.resumable:
                message += "\n" + self.resume_message("stopped")
            print(message, file=sys.stderr)
            return e.code
        self.stop()
        return self._summary()

    def stop(self) -> None:
        self.state.save()
        if self.reporter is not None:
            self.reporter.close()

    def pump(self) -> None:
        """One round for a caller that loops by itself (``pixelmill watch``, client/watch.py): submit
        what is new until the server asks to wait, poll once, download what finished, save the state."""
        while self.to_submit and time.monotonic() >= self.hold_until:
            self._guarded(self._submit_next)
        if self._open() and time.monotonic() >= self.next_poll:
            self._guarded(self._poll)
        self.state.save()

    def _loop(self) -> None:
        wait = self.options.wait
        while self.to_submit or (wait and self._open()):
            now = time.monotonic()
            busy = False
            if self.to_submit and now >= self.hold_until:
                self._guarded(self._submit_next)
                busy = True
            if wait and now >= self.next_poll and self._open():
                changed = self._guarded(self._poll)
                self.poll_interval = POLL_MIN_S if changed else min(self.poll_interval * 1.5, POLL_MAX_S)
                self.next_poll = time.monotonic() + self.poll_interval
            if not busy:
                due = [self.next_poll] if wait and self._open() else []
                due += [self.hold_until] if self.to_submit else []
                time.sleep(min(max(min(due, default=now) - time.monotonic(), 0.05), POLL_MAX_S))

    def _guarded(self, step) -> bool:
        """Run one step; a lost connection or a passing server error is retried for PATIENCE_S."""
        try:
            result = step()
        except ServerUnreachable as e:
            self._lost(str(e))
            return False
        except ApiError as e:
            if e.status < 500:
                raise Abort(f"the server at {self.options.url} answered {e.status}: {e.message}",
                            code=EXIT_USAGE, resumable=True) from e
            self._lost(f"the server at {self.options.url} answered {e.status}: {e.message}")
            return False
        if self.down_since is not None:
            self._say("the server answers again; carrying on")
            self.down_since = None
        return bool(result)

    def _lost(self, message: str) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self._say(f"{message}; retrying for up to {PATIENCE_S:.0f} s")
        elif now - self.down_since > PATIENCE_S:
            raise Abort(message, code=EXIT_USAGE, resumable=True)
        self.hold_until = max(self.hold_until, now + 2.0)
        self.next_poll = max(self.next_poll, now + 2.0)

    # --- submitting ----------------------------------------------------------------------

    def _submit_next(self) -> bool:
        chunk = self._take_chunk()
        files: list[tuple[str, bytes]] = []
        for key in chunk:
            try:
                files.append((self.inputs[key].upload_name, self.inputs[key].read()))
            except (OSError, InputError) as e:
                self._finish(key, REFUSED, f"cannot read it any more: {e}")
        chunk = [key for key in chunk if self.entries[key].status == NEW]
        if not chunk:
            self.state.save()
            return True
        try:
            payload = self.client.create_batch(files, params=self.options.params,
                                               idempotency_key=self._idempotency_key(chunk))
        except ApiError as e:
            self.to_submit.extendleft(reversed(chunk))
            self._refused(chunk, e)
            self.state.save()
            return True
        except BaseException:
            self.to_submit.extendleft(reversed(chunk))
            raise
        by_name = {job["input_name"]: job for job in payload["jobs"]}
        for key, job in zip(chunk, payload["jobs"]):
            job = by_name.get(self.inputs[key].upload_name, job)
            entry = self.entries[key]
            entry.job_id, entry.batch_id, entry.status, entry.reason = job["id"], payload["id"], job["status"], None
        self.state.save()  # before anything else: a job id not on disk would be submitted again
        self.batches_sent += 1
        self._say(f"batch {payload['id']}: {len(chunk)} image(s) queued → {self.options.url}/batches/{payload['id']}")
        return True

    def _idempotency_key(self, chunk: list[str]) -> str:
        """One key per file (its input id, content and the parameters), joined for the request:
        a rerun after a network error sends the same files with the same key, and the server
        answers the batch it already made instead of making it again."""
        params = json.dumps(self.options.params, sort_keys=True)
        per_file = [hashlib.sha256(f"{key}\n{self.inputs[key].sha256}\n{params}".encode()).hexdigest()
                    for key in chunk]
        return "pixelmill-submit-" + hashlib.sha256("".join(per_file).encode()).hexdigest()

    def _take_chunk(self) -> list[str]:
        chunk: list[str] = []
        size = 0
        while self.to_submit and len(chunk) < self.max_files:
            key = self.to_submit[0]
            if chunk and size + self.inputs[key].size > self.max_bytes:
                break
            chunk.append(self.to_submit.popleft())
            size += self.inputs[key].size
        return chunk

    def _refused(self, chunk: list[str], error: ApiError) -> None:
        """Take a refused batch apart: name the file, shrink the chunks, wait, or stop."""
        if error.status >= 500:
            raise error  # passing trouble: retried by _guarded
        if error.status == 429:
            wait_s = error.retry_after or 30.0
            self.hold_until = time.monotonic() + wait_s
            self._say(f"the server is busy: {error.message}; submitting again in {wait_s:.0f} s")
            return
        culprit = self._named_in(chunk, error.message)
        if culprit is not None:
            self.to_submit.remove(culprit)
            self._finish(culprit, REFUSED, _strip_prefix(error.message, self.inputs[culprit].upload_name))
            return
        if match := re.search(r"at most (\d+) per batch", error.message):
            self.max_files = max(1, min(int(match.group(1)), len(chunk) - 1))
            return
        if error.status == 413:
            if len(chunk) > 1:
                self.max_files = max(1, len(chunk) // 2)
                self.max_bytes = max(1, sum(self.inputs[k].size for k in chunk) // 2)
                return
            self.to_submit.remove(chunk[0])
            self._finish(chunk[0], REFUSED, error.message)
            return
        if error.status in (401, 403):
            raise Abort(f"the server at {self.options.url} refused the API key: {error.message} "
                        "(pass --api-key or set PIXELMILL_API_KEY)", code=EXIT_USAGE)
        raise Abort(f"the server refused the submission: {error.message}", code=EXIT_USAGE)

    def _named_in(self, chunk: list[str], message: str) -> str | None:
        named = [key for key in chunk if message.startswith(f"{self.inputs[key].upload_name}: ")]
        return max(named, key=lambda k: len(self.inputs[k].upload_name), default=None)

    # --- waiting and downloading ----------------------------------------------------------

    def _open(self) -> bool:
        """Inputs whose job is still running or whose result is not saved yet."""
        return any(e.is_submitted() and not self._is_done(e) for e in self.entries.values())

    def _is_done(self, entry: Entry) -> bool:
        return entry.is_finished() and (entry.downloaded or entry.status != "succeeded")

    def _poll(self) -> bool:
        changed = False
        for key, entry in self.entries.items():
            if entry.status == "succeeded" and not entry.downloaded:
                changed |= self._download(key)
        running: dict[str, list[str]] = {}
        for key, entry in self.entries.items():
            if entry.is_submitted() and not entry.is_finished():
                running.setdefault(entry.batch_id or "", []).append(key)
        for batch_id, keys in running.items():
            for key, job in self._fetch_jobs(batch_id, keys).items():
                changed |= self._update(key, job)
        if changed:
            self.state.save()
        return changed

    def _fetch_jobs(self, batch_id: str, keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """The current payload of each job (None: the server no longer knows it); one GET per batch."""
        if batch_id:
            try:
                jobs = {job["id"]: job for job in self.client.fetch_batch(batch_id)["jobs"]}
                return {key: jobs.get(self.entries[key].job_id or "") for key in keys}
            except ApiError as e:
                if e.status != 404:
                    raise
        found: dict[str, dict[str, Any] | None] = {}
        for key in keys:
            try:
                found[key] = self.client.fetch_job(self.entries[key].job_id or "")
            except ApiError as e:
                if e.status != 404:
                    raise
                found[key] = None
        return found

    def _update(self, key: str, job: dict[str, Any] | None) -> bool:
        entry = self.entries[key]
        if job is None:
            self._resubmit(key, "the server no longer knows its job")
            return True
        if job["status"] == entry.status:
            return False
        entry.status = job["status"]
        if entry.status == "succeeded":
            self._download(key)
        elif entry.status in TERMINAL:
            self._finish(key, entry.status, _reason(job))
        return True

    def _download(self, key: str) -> bool:
        entry = self.entries[key]
        try:
            data = self.client.fetch_result(entry.job_id or "")
        except ApiError as e:
            if e.status == 404:
                self._resubmit(key, "the server no longer has its job")
            elif e.status == 403:
                self._finish(key, "blocked", e.message)
            elif e.status == 409:
                entry.status = "running"  # not servable yet after all: poll it again
            else:
                raise
            return True
        target = self.result_path(entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(data)
        tmp.replace(target)
        entry.downloaded = True
        self._finish(key, "succeeded", None)
        return True

    def _resubmit(self, key: str, why: str) -> None:
        entry = self.entries[key]
        self._say(f"{entry.source}: {why} ({entry.job_id}); submitting it again")
        entry.reset()
        self.to_submit.append(key)

    def _finish(self, key: str, status: str, reason: str | None) -> None:
        entry = self.entries[key]
        entry.status, entry.reason = status, reason
        ok = status == "succeeded"
        if self.reporter is not None:
            if not ok:
                self._say(f"{entry.source}: {status}: {reason}")
            elif not self.reporter.has_bar and self.options.wait:
                self._say(f"{entry.source}: done → {self.result_path(entry)}")
            self.reporter.finished(ok=ok)

    # --- reporting -------------------------------------------------------------------------

    def result_path(self, entry: Entry) -> Path:
        return self.options.out / f"{entry.target}.png"

    def _plan(self, *, ok: int, failed: int) -> None:
        waiting = sum(1 for e in self.entries.values() if e.is_submitted() and not self._is_done(e))
        parts = [f"{len(self.entries) + len(self.unreadable)} image(s)"]
        if ok or failed or waiting:
            parts.append(f"{ok} already done, {failed} failed before, {waiting} still on the server "
                         f"(state: {self.state.path})")
        parts.append(f"{len(self.to_submit)} to submit to {self.options.url}")
        self._say("; ".join(parts))

    def _summary(self) -> int:
        rows = [(item.display, "unreadable", item.reason) for item in self.unreadable]
        rows += [(e.source, e.status, e.reason or "") for e in self.entries.values() if e.is_failure()]
        total = len(self.entries) + len(self.unreadable)
        if self.options.wait:
            ok = sum(1 for e in self.entries.values() if e.status == "succeeded" and e.downloaded)
            print(f"{ok} of {total} succeeded; results in {self.options.out}/")
        else:
            queued = sum(1 for e in self.entries.values() if e.is_submitted())
            print(f"{queued} of {total} image(s) submitted ({self.batches_sent} new batch(es)); to download "
                  f"the results, run the same command with --wait (nothing is submitted twice)")
        if rows:
            print(f"{len(rows)} of {total} failed:\n{failure_table(rows)}")
            return EXIT_FAILED
        return EXIT_OK

    def resume_message(self, what: str) -> str:
        done = sum(1 for e in self.entries.values() if e.status == "succeeded" and e.downloaded)
        return (f"{what}: {done} of {len(self.entries)} result(s) saved in {self.options.out}/ "
                f"(state in {self.options.out / STATE_NAME}).\n"
                f"To resume, run the same command again; finished images are not submitted twice:\n"
                f"  {self.options.resume_command}")

    def _say(self, message: str) -> None:
        if self.reporter is not None:
            self.reporter.say(message)
        else:
            print(message, flush=True)

    def _entry_for(self, item: Input) -> Entry:
        entry = self.state.entries.get(item.source_id)
        if entry is None or entry.sha256 != item.sha256:
            entry = Entry(source=item.display, sha256=item.sha256, target=item.target)
            self.state.entries[item.source_id] = entry
        entry.source = item.display
        if entry.status == REFUSED or (self.options.retry_failed and entry.is_failure()):
            entry.reset()
        if entry.downloaded and not self.result_path(entry).exists():
            entry.downloaded = False  # the result was deleted since: fetch it again
        return entry


def _reason(job: dict[str, Any]) -> str:
    if message := (job.get("error") or {}).get("message"):
        return str(message)
    if reasons := (job.get("audit") or {}).get("reasons"):
        return "; ".join(map(str, reasons))
    return {"blocked": "blocked by the safety audit", "canceled": "canceled"}.get(job["status"], job["status"])


def _strip_prefix(message: str, name: str) -> str:
    return message.removeprefix(f"{name}: ").removesuffix(_BATCH_SUFFIX)
