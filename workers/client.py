"""A small HTTP client of the JSON API, used by ``pixelmill submit``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
TERMINAL = {"succeeded", "failed", "blocked", "canceled"}


def collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def submit_files(url: str, paths: list[Path], *, params: dict, wait: bool, out: Path) -> int:
    files = collect(paths)
    if not files:
        print("no images found (looked for .png, .jpg, .jpeg, .webp)")
        return 2
    jobs: dict[str, Path] = {}
    failed = 0
    for path in files:
        with path.open("rb") as f:
            response = requests.post(f"{url}/api/v1/jobs", files={"image": (path.name, f)},
                                     data={"params": json.dumps(params)}, timeout=60)
        if response.status_code != 202:
            failed += 1
            print(f"{path}: refused ({response.status_code}): {response.json()['error']['message']}")
            continue
        job = response.json()
        jobs[job["id"]] = path
        print(f"{path}: job {job['id']} → {job['links']['page']}")
    if not wait:
        return 1 if failed else 0

    out.mkdir(parents=True, exist_ok=True)
    pending = dict(jobs)
    while pending:
        for job_id, path in list(pending.items()):
            job = requests.get(f"{url}/api/v1/jobs/{job_id}", timeout=30).json()
            if job["status"] not in TERMINAL:
                continue
            del pending[job_id]
            if job["status"] == "succeeded":
                target = out / f"{path.stem}.png"
                target.write_bytes(requests.get(job["links"]["result"], timeout=60).content)
                print(f"{path}: done → {target}")
            else:
                failed += 1
                reason = (job.get("error") or {}).get("message") or job["status"]
                print(f"{path}: {job['status']}: {reason}")
        if pending:
            time.sleep(0.5)
    print(f"{len(files) - failed} of {len(files)} succeeded")
    return 1 if failed else 0
