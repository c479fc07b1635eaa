"""Quality scores and the quality policy as jobs meet them: which policy a job is judged by, the
check at submit (a policy on CLIPScore needs a CLIP model: 422 naming PIXELMILL_CLIP_MODEL), and
the seeds of regenerations. The scores are computed in audit (tasks.stages.audit); the policy's
decisions are safety.quality_policy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safety.quality_policy import QualityAction, QualityPolicy
from tasks.errors import PixelmillError
from tasks.jobs import JobParams
from tasks.models import resolve_clip
from tasks.services import Services

SEED_STEP = 0x9E3779B1  # a regeneration's seed: the job's seed plus this per attempt (mod 2**32)


class QualityRefused(PixelmillError):
    code = "invalid_parameters"
    status = 422


def has_prompt(params: Mapping[str, Any]) -> bool:
    """Whether a job gets a CLIPScore (when a CLIP model is configured): diffusion with a prompt."""
    return params.get("engine") == "diffusion" and bool(str(params.get("prompt") or "").strip())


def policy_for(rt: Services, *, tenant: str, params: Mapping[str, Any]) -> QualityPolicy | None:
    """The policy a job is judged by: the tenant's (or the settings' default); a job's own
    ``min_clipscore`` replaces its metric and threshold (its action and retries stay; flag when
    the tenant has no policy)."""
    policy = rt.quality_policy(tenant)
    wanted = params.get("min_clipscore")
    if wanted is None:
        return policy
    return QualityPolicy(metric="clipscore", threshold=float(wanted),
                         action=policy.action if policy else QualityAction.FLAG,
                         max_retries=policy.max_retries if policy else 0)


def check_quality(rt: Services, *, tenant: str, params: JobParams) -> None:
    """At submit: a job that would be judged by CLIPScore needs a CLIP model (ModelRefused, 422,
    naming PIXELMILL_CLIP_MODEL); ``min_clipscore`` needs a diffusion job with a prompt."""
    data = params.model_dump()
    if params.min_clipscore is not None and not has_prompt(data):
        raise QualityRefused("min_clipscore needs a diffusion job with a prompt: CLIPScore measures how well the "
                             "result matches its prompt")
    if not has_prompt(data):
        return  # nothing to measure with CLIP: the tenant's policy need not be read
    policy = policy_for(rt, tenant=tenant, params=data)
    if policy is not None and policy.needs_clip:
        resolve_clip(rt.settings)


def next_seed(seed: int | None, attempt: int) -> int:
    """The seed of regeneration ``attempt`` (1, 2, …) of a job that ran with ``seed``: reproducible."""
    return ((seed or 0) + attempt * SEED_STEP) % 2**32
