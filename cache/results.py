"""Whole results: an identical request (same latent, same parameters, same seed) is answered
from the stored result instead of being generated again.

An entry maps a result key (cache.keys.result_key) to the reference of the generated image
(a blob the caller stores elsewhere) as JSON, with a TTL, in the scope of the latent.

Scores are kept the same way: a model's score of a stored image, by the image's blob reference
(blobs are content-addressed — the same reference, the same pixels, the same score), so the audit
does not run its classifier again on an image the scope has had scored.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from cache.backend import Backend, cache_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredResult:
    generated: str          # blob reference of the generated image
    job_id: str             # the job that generated it
    created_at: float


class ResultStore:
    def __init__(self, backend: Backend, *, ttl_s: int) -> None:
        self.backend = backend
        self.ttl_s = ttl_s

    def fetch(self, *, token: str, key: str) -> StoredResult | None:
        raw = self.backend.call("fetch result", lambda r: r.get(cache_key(token, "result", key)), None)
        if raw is None:
            return None
        try:
            return StoredResult(**json.loads(raw))
        except (ValueError, TypeError) as e:
            log.warning("stored result %s could not be read (%s); ignoring it", key, e)
            return None

    def save(self, *, token: str, key: str, generated: str, job_id: str) -> bool:
        value = json.dumps(asdict(StoredResult(generated=generated, job_id=job_id, created_at=time.time())))
        return bool(self.backend.call("save result", lambda r: r.set(cache_key(token, "result", key), value,
                                                                     ex=self.ttl_s), False))

    def fetch_score(self, *, token: str, model: str, ref: str) -> float | None:
        raw = self.backend.call("fetch score", lambda r: r.get(cache_key(token, "score", model, ref)), None)
        return None if raw is None else float(raw)

    def save_score(self, *, token: str, model: str, ref: str, score: float) -> bool:
        return bool(self.backend.call("save score", lambda r: r.set(cache_key(token, "score", model, ref),
                                                                    repr(score), ex=self.ttl_s), False))

    def drop(self, *, token: str, key: str) -> None:
        self.backend.call("drop result", lambda r: r.delete(cache_key(token, "result", key)), None)
