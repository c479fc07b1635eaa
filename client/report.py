"""What ``pixelmill submit`` shows: a progress bar over the batch (tqdm, on stderr), messages
that do not tear it (on stdout), and the table of failures at the end."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Reporter:
    """Counts finished inputs; with ``bar`` a tqdm bar shows them with ok/failed counts."""

    def __init__(self, *, total: int, ok: int, failed: int, bar: bool) -> None:
        self.ok = ok
        self.failed = failed
        self._bar: tqdm | None = None
        if bar:
            self._bar = tqdm(total=total, initial=ok + failed, unit="img", desc="pixelmill", file=sys.stderr,
                             dynamic_ncols=True, smoothing=0.1, postfix=self._postfix())  # str: kept as is

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def say(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    def finished(self, *, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(1)

    def _postfix(self) -> str:
        return f"ok={self.ok}, failed={self.failed}"  # as a string: tqdm sorts keyword postfixes

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def failure_table(rows: list[tuple[str, str, str]]) -> str:
    """Rows of (file, status, reason) as an aligned plain-text table."""
    header = ("file", "status", "reason")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
    lines = [f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in [header, *rows]]
    lines.insert(1, f"  {'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    return "\n".join(lines)
