"""What ``pixelmill submit`` uploads: image files, folders (recursively) and zip archives.

Each input gets a stable id (its resolved path, or archive path + member), the sha256 of its
bytes, and a result path under ``--out`` that mirrors where it came from and that no other
input shares:

- a file ``a.jpg``                      → ``out/a.png``
- a folder ``photos/`` with ``x/b.webp`` → ``out/x/b.png``   (relative to the folder)
- an archive ``pics.zip`` with ``y/c.png`` → ``out/pics/y/c.png``

When two inputs would land on the same result (``a.jpg`` and ``a.png``, or two folders that
both hold ``a.jpg``) the later one keeps its extension (``a.jpg.png``), then gets a counter
(``a-2.png``). Targets already recorded in the resume state stay with their input.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
MAX_MEMBER_BYTES = 200 * 1024 * 1024  # an archive member larger than this is not read (zip bombs)
_SKIPPED_PARTS = {"__MACOSX"}


class InputError(Exception):
    """A path given on the command line cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Input:
    source_id: str  # resolved path, or "<resolved archive>!<member>"
    display: str  # how the user knows it: "photos/x/b.webp", "pics.zip/y/c.png"
    target: str  # result path under --out, posix, without the ".png"
    suffix: str  # the original extension, ".jpg"
    sha256: str
    size: int
    path: Path
    member: str | None = None

    @property
    def upload_name(self) -> str:
        """The file name sent to the server: unique within a run, so a refusal names one input."""
        return f"{self.target}{self.suffix}"

    def read(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as archive:
            return _read_member(archive, archive.getinfo(self.member))


@dataclass(frozen=True)
class Unreadable:
    """A source that could not be read at all (a broken archive): reported, not uploaded."""

    display: str
    reason: str


@dataclass(frozen=True)
class _Candidate:
    source_id: str
    display: str
    natural: str
    suffix: str
    sha256: str
    size: int
    path: Path
    member: str | None


def collect_inputs(paths: list[Path], *, exclude: Path | None = None,
                   reserved: Mapping[str, str] | None = None) -> tuple[list[Input], list[Unreadable]]:
    """Every image under ``paths``, in command-line order, each source once.

    ``exclude`` (the --out folder) is never walked, so results are not taken for inputs.
    ``reserved`` maps source ids to the targets an earlier run gave them.
    """
    candidates: list[_Candidate] = []
    unreadable: list[Unreadable] = []
    seen: set[str] = set()
    excluded = exclude.resolve() if exclude is not None else None
    for path in paths:
        if not path.exists():
            raise InputError(f"no such file or folder: {path}")
        if path.is_dir():
            found = _from_folder(path, excluded=excluded)
        elif path.suffix.lower() == ".zip":
            try:
                found = _from_archive(path, unreadable=unreadable)
            except (zipfile.BadZipFile, OSError) as e:
                unreadable.append(Unreadable(display=str(path), reason=f"not a readable zip archive: {e}"))
                continue
        else:  # a file named explicitly is uploaded whatever its extension: the server judges it
            found = [_file_candidate(path, display=str(path), natural=path.stem)]
        for candidate in found:
            if candidate.source_id not in seen:
                seen.add(candidate.source_id)
                candidates.append(candidate)
    return assign_targets(candidates, reserved=reserved or {}), unreadable


def folder_files(folder: Path, files: list[Path], *, reserved: Mapping[str, str],
                 hashed: MutableMapping[Path, tuple[tuple[int, int], _Candidate]] | None = None) -> list[Input]:
    """Inputs for some ``files`` of ``folder`` (``pixelmill watch``: those that settled), each with
    the target a run over the whole folder gives it (``x/b.webp`` → ``x/b``). ``hashed`` keeps each
    file's digest between calls, for as long as its size and mtime do not change."""
    candidates = []
    for path in files:
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        known = hashed.get(path) if hashed is not None else None
        if known is None or known[0] != signature:
            natural = path.relative_to(folder).with_suffix("").as_posix()
            known = (signature, _file_candidate(path, display=str(path), natural=natural))
            if hashed is not None:
                hashed[path] = known
        candidates.append(known[1])
    return assign_targets(candidates, reserved=reserved)


def assign_targets(candidates: list[_Candidate], *, reserved: Mapping[str, str]) -> list[Input]:
    """Give each candidate a target no other input (of this run or of the state) uses."""
    used = {target.casefold() for target in reserved.values()}
    inputs = []
    for c in candidates:
        target = reserved.get(c.source_id) or _free_target(c, used)
        used.add(target.casefold())
        inputs.append(Input(source_id=c.source_id, display=c.display, target=target, suffix=c.suffix,
                            sha256=c.sha256, size=c.size, path=c.path, member=c.member))
    return inputs


def _free_target(c: _Candidate, used: set[str]) -> str:
    options = [c.natural, f"{c.natural}{c.suffix}"] if c.suffix else [c.natural]
    for option in options:
        if option.casefold() not in used:
            return option
    n = 2
    while f"{c.natural}-{n}".casefold() in used:
        n += 1
    return f"{c.natural}-{n}"


def _from_folder(folder: Path, *, excluded: Path | None) -> list[_Candidate]:
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_PARTS
                         and (excluded is None or (root_path / d).resolve() != excluded))
        for name in sorted(files):
            path = root_path / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            relative = path.relative_to(folder).with_suffix("").as_posix()
            found.append(_file_candidate(path, display=str(path), natural=relative))
    return found


def _file_candidate(path: Path, *, display: str, natural: str) -> _Candidate:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return _Candidate(source_id=str(path.resolve()), display=display, natural=natural,
                      suffix=path.suffix.lower(), sha256=digest.hexdigest(), size=size, path=path, member=None)


def _from_archive(path: Path, *, unreadable: list[Unreadable]) -> list[_Candidate]:
    resolved, found = path.resolve(), []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = _safe_parts(info.filename)
            if info.is_dir() or not parts or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            member_path = PurePosixPath(*parts)
            try:
                data = _read_member(archive, info)
            except (InputError, zipfile.BadZipFile, OSError) as e:
                unreadable.append(Unreadable(display=f"{path}/{member_path}", reason=str(e)))
                continue
            found.append(_Candidate(source_id=f"{resolved}!{info.filename}", display=f"{path}/{member_path}",
                                    natural=f"{path.stem}/{member_path.with_suffix('')}",
                                    suffix=member_path.suffix.lower(), sha256=hashlib.sha256(data).hexdigest(),
                                    size=len(data), path=path, member=info.filename))
    return found


def _safe_parts(name: str) -> tuple[str, ...]:
    """A member's path parts with nothing that could leave the archive's folder under --out
    (``..``, absolute paths, drive letters) and nothing hidden (``__MACOSX``, ``._x.jpg``)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in {"", ".", ".."}]
    if parts and parts[0].endswith(":"):
        parts = parts[1:]
    if any(p.startswith(".") or p in _SKIPPED_PARTS for p in parts):
        return ()
    return tuple(parts)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with archive.open(info) as f:
        data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise InputError(f"larger than {MAX_MEMBER_BYTES // 2**20} MiB unpacked; "
                         "extract it and upload it as a file")
    return data
