"""Quality scores and the quality policy without a broker: CLIPScore on the tiny CLIP, sharpness,
pHash distance, the policy's decisions, the score histograms, the library's clip/ entries."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from safety.quality import Verdict
from safety.quality_policy import (FAIL_CODE, Outcome, QualityAction, QualityPolicy, best_attempt, judge, keep_best,
                                   with_judgement)
from safety.scores import measure, phash_distance, sharpness
from tasks.metrics import SCORE_BUCKETS, Aggregate, Histogram
from tasks.scoring import has_prompt, next_seed
from tests.conftest import photo


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from workers.tiny_model import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def scorer(tiny_clip):
    from workers.clip_score import ClipScorer

    return ClipScorer.load(tiny_clip)


# --- CLIPScore -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("cosine", "score"), [(1.0, 100.0), (0.3, 30.0), (0.0, 0.0), (-0.4, 0.0), (0.123456, 12.3456)])
def test_clipscore_is_100_times_the_positive_cosine(cosine, score) -> None:
    from workers.clip_score import clip_score

    assert clip_score(cosine) == pytest.approx(score)


def test_the_tiny_clip_scores_in_range_deterministically_and_the_same_alone_or_batched(scorer) -> None:
    images = [photo("astronaut", size=64), photo("coffee", size=80), photo("chelsea", size=48)]
    prompts = ["an astronaut", "a cup of coffee", "a cat"]
    cosines = scorer.cosines(images, prompts)
    assert all(-1.0 <= c <= 1.0 for c in cosines)
    scores = scorer.scores(images, prompts)
    assert all(0.0 <= s <= 100.0 for s in scores)
    assert np.allclose(scores, [100 * max(c, 0) for c in cosines], atol=1e-3)
    assert scorer.scores(images, prompts) == scores  # deterministic
    alone = [scorer.score(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
    assert np.allclose(alone, scores, atol=1e-3)  # padding to the batch's longest prompt changes nothing
    assert len({round(c, 6) for c in cosines}) == 3  # it does look at its inputs
    assert scorer.cosines([images[0]], ["a cat"]) != scorer.cosines([images[0]], ["an astronaut"])


def test_the_preprocessing_crops_to_the_model_size(scorer) -> None:
    pixels = scorer.pixels([photo("chelsea", size=90)])  # 3:2, larger than 32
    assert tuple(pixels.shape) == (1, 3, 32, 32)


def test_a_half_precision_model_gets_its_pixels_in_its_dtype(tiny_clip, scorer) -> None:
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from workers.clip_score import CLIP_MEAN, CLIP_STD, ClipScorer

    half = ClipScorer(CLIPModel.from_pretrained(tiny_clip).to(torch.float16), CLIPTokenizer.from_pretrained(tiny_clip),
                      size=32, crop=32, mean=CLIP_MEAN, std=CLIP_STD)  # as bench/gpu_sd15.py runs it in fp16
    image = photo("astronaut", size=64)
    assert half.pixels([image]).dtype == torch.float16
    assert half.score(image, "an astronaut") == pytest.approx(scorer.score(image, "an astronaut"), abs=1.0)


def test_a_loaded_scorer_is_cached_per_process(tiny_clip) -> None:
    from workers.clip_score import load_scorer

    first = load_scorer(path=str(tiny_clip), fingerprint="a")
    assert load_scorer(path=str(tiny_clip), fingerprint="a") is first
    assert load_scorer(path=str(tiny_clip), fingerprint="b") is not first  # its files changed: loaded again


def test_worker_warm_up_loads_the_clip_model_so_the_first_audit_does_not(tiny_clip, tmp_path, monkeypatch,
                                                                        caplog) -> None:
    from types import SimpleNamespace

    import tasks.worker_runtime as worker_runtime
    from tasks.settings import Settings
    from workers.clip_score import load_scorer

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "tiny-clip").symlink_to(tiny_clip, target_is_directory=True)
    monkeypatch.setattr(worker_runtime, "get_classifier", lambda: None)  # the NSFW model: not this test's
    monkeypatch.setattr(worker_runtime, "check_memory_policy", lambda *a, **k: SimpleNamespace(problems=[]))  # Redis
    load_scorer.cache_clear()
    worker_runtime.WorkerRuntime(Settings(models_dir=tmp_path, clip_model="", preload_models=False)).warm_up()
    assert load_scorer.cache_info().currsize == 0  # none configured: nothing loaded
    rt = worker_runtime.WorkerRuntime(Settings(models_dir=tmp_path, clip_model="tiny-clip", preload_models=False))
    rt.warm_up()
    loaded = load_scorer.cache_info()
    assert loaded.currsize == 1 and loaded.misses == 1
    assert rt.clip_scorer().name == "tiny-clip"  # what audit asks for: already resident
    assert load_scorer.cache_info().misses == 1 and load_scorer.cache_info().hits == loaded.hits + 1

    broken = worker_runtime.WorkerRuntime(Settings(models_dir=tmp_path, clip_model="nope", preload_models=False))
    with caplog.at_level("WARNING", logger="tasks.worker_runtime"):
        broken.warm_up()  # a CLIP model that cannot be loaded does not keep the worker from starting
    assert "CLIP model not loaded at start" in caplog.text and "PIXELMILL_CLIP_MODEL" in caplog.text


def test_a_folder_that_is_no_clip_model_says_where_to_put_one(tmp_path) -> None:
    from workers.clip_score import ClipScorer
    from workers.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="clip/"):
        ClipScorer.load(tmp_path)


def test_the_library_lists_the_tiny_clip_as_usable(tiny_clip, tmp_path) -> None:
    from workers.library import Library

    root = tmp_path / "lib"
    (root / "clip").mkdir(parents=True)
    (root / "clip" / "tiny-clip").symlink_to(tiny_clip, target_is_directory=True)
    (root / "clip" / "bare").mkdir()
    (root / "clip" / "bare" / "config.json").write_text('{"model_type": "clip"}')
    library = Library(root)
    entries = {e.name: e for e in library.entries("clip")}
    assert entries["tiny-clip"].is_usable and entries["tiny-clip"].format == "transformers"
    assert "no CLIP weights" in entries["bare"].problem
    assert library.names("clip") == ["tiny-clip"]


# --- cheap signals -----------------------------------------------------------------------------------

def test_sharpness_is_lower_for_a_blurred_image_and_near_zero_for_a_flat_one() -> None:
    image = photo("astronaut", size=256)
    blurred = cv2.GaussianBlur(image, (0, 0), 3)
    assert sharpness(blurred) < sharpness(image) / 4
    assert sharpness(np.full((64, 64, 3), 128, np.uint8)) == 0.0
    assert sharpness(image[..., 0]) > 0  # grayscale too


def test_phash_distance_is_zero_for_the_same_picture_and_large_for_another() -> None:
    image = photo("astronaut", size=128)
    assert phash_distance(image, image.copy()) == 0
    assert phash_distance(image, photo("astronaut", size=96)) <= 4  # the same picture, another size
    assert phash_distance(image, photo("coffee", size=128)) > 10
    scores = measure(image, reference=image)
    assert scores["phash_distance"] == 0.0 and scores["sharpness"] > 0


def test_sharpness_refuses_what_is_no_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        sharpness(np.zeros((4, 4), np.float32))


# --- the policy ---------------------------------------------------------------------------------------

def _policy(action: str, *, threshold: float = 30.0, retries: int = 2, metric: str = "clipscore") -> QualityPolicy:
    return QualityPolicy(metric=metric, threshold=threshold, action=QualityAction(action), max_retries=retries)


@pytest.mark.parametrize(("action", "score", "outcome"), [
    ("flag", 31.0, Outcome.PASS), ("flag", 30.0, Outcome.PASS), ("flag", 29.9, Outcome.FLAG),
    ("fail", 29.9, Outcome.FAIL), ("fail", 45.0, Outcome.PASS), ("regenerate", 10.0, Outcome.REGENERATE),
])
def test_judge_below_the_threshold_does_what_the_action_says(action, score, outcome) -> None:
    judgement = judge(_policy(action), {"clipscore": score}, attempt=1, can_regenerate=True)
    assert judgement.outcome is outcome and judgement.score == score
    assert (judgement.reason is None) == (outcome is Outcome.PASS)


def test_regenerate_stops_after_max_retries_and_never_for_a_style_job() -> None:
    policy = _policy("regenerate", retries=2)
    outcomes = [judge(policy, {"clipscore": 5.0}, attempt=n, can_regenerate=True).outcome for n in (1, 2, 3)]
    assert outcomes == [Outcome.REGENERATE, Outcome.REGENERATE, Outcome.FLAG]
    style = judge(_policy("regenerate", metric="sharpness", threshold=500), {"sharpness": 20.0}, attempt=1,
                  can_regenerate=False)
    assert style.outcome is Outcome.FLAG and "cannot be regenerated" in style.reason
    assert judge(_policy("regenerate", retries=0), {"clipscore": 5.0}, attempt=1,
                 can_regenerate=True).outcome is Outcome.FLAG


def test_a_job_without_the_metric_is_not_judged() -> None:
    judgement = judge(_policy("fail"), {"sharpness": 100.0}, attempt=1, can_regenerate=True)
    assert judgement.outcome is Outcome.UNSCORED and judgement.score is None


def test_keep_best_serves_the_best_scoring_attempt() -> None:
    policy = _policy("regenerate", threshold=50, retries=2)
    attempts = [{"clipscore": 20.0}, {"clipscore": 41.0}, {"clipscore": 33.0}]
    last = judge(policy, attempts[-1], attempt=3, can_regenerate=True)
    index, settled = keep_best(last, attempts)
    assert index == 1 and settled.kept == 2 and settled.score == 41.0 and settled.outcome is Outcome.FLAG
    assert "attempt 2" in settled.reason and "3 attempts" in settled.reason
    assert best_attempt([{"clipscore": 3.0}, {"clipscore": 3.0}], "clipscore") == 0
    passed = judge(policy, {"clipscore": 60.0}, attempt=2, can_regenerate=True)
    assert keep_best(passed, [{"clipscore": 10.0}, {"clipscore": 60.0}])[0] == 1


def test_with_judgement_flags_a_passed_audit_and_says_why() -> None:
    audit = {"verdict": "pass", "reasons": [], "scores": {"nsfw": 0.01}}
    flagged = with_judgement(audit, judge(_policy("flag"), {"clipscore": 3.0}, attempt=1, can_regenerate=True))
    assert flagged["verdict"] == Verdict.FLAG.value and "below the threshold" in flagged["reasons"][0]
    assert flagged["quality"]["outcome"] == "flag" and flagged["quality"]["metric"] == "clipscore"
    assert audit["verdict"] == "pass"  # not changed in place
    assert with_judgement(audit, None)["quality"] is None
    failed = with_judgement(audit, judge(_policy("fail"), {"clipscore": 3.0}, attempt=1, can_regenerate=True))
    assert "fails the job" in failed["reasons"][0] and FAIL_CODE == "quality_below_threshold"


@pytest.mark.parametrize("bad", [dict(metric="aesthetic"), dict(threshold=-1), dict(threshold=101),
                                 dict(max_retries=11), dict(max_retries=-1)])
def test_a_bad_policy_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        QualityPolicy(**{"metric": "clipscore", "threshold": 30.0, **bad})


def test_a_policy_round_trips_through_its_dict() -> None:
    policy = _policy("regenerate", threshold=1200, retries=3, metric="sharpness")
    assert QualityPolicy.from_dict(policy.to_dict()) == policy


def test_regeneration_seeds_are_reproducible_and_new() -> None:
    seeds = [next_seed(42, n) for n in (1, 2, 3)]
    assert seeds == [next_seed(42, n) for n in (1, 2, 3)] and len({42, *seeds}) == 4
    assert all(0 <= s < 2**32 for s in seeds)
    assert has_prompt({"engine": "diffusion", "prompt": "a cat"})
    assert not has_prompt({"engine": "diffusion", "prompt": "  "}) and not has_prompt({"engine": "style"})


# --- histograms --------------------------------------------------------------------------------------

def test_score_fields_parse_into_histograms_with_their_own_buckets() -> None:
    bounds = SCORE_BUCKETS["clipscore"]
    raw = {b"score:clipscore:3": b"2", b"score:clipscore:5": b"2", b"score_sum:clipscore": b"80.0",
           b"score:sharpness:4": b"1", b"score_sum:sharpness": b"200", b"score:unknown:1": b"5"}
    agg = Aggregate.parse(raw)
    clip = agg.score_histogram("clipscore")
    assert clip.count == 4 and clip.sum == 80.0 and clip.bounds == bounds
    assert bounds[2] <= clip.quantile(0.5) <= bounds[5]
    assert agg.score_histogram("sharpness").count == 1 and set(agg.scores) == {"clipscore", "sharpness"}
    merged = Aggregate().merge(agg).merge(agg)
    assert merged.score_histogram("clipscore").count == 8
    hist = Histogram.of((1.0, 2.0))
    hist.observe(1.5)
    assert hist.counts == [0, 1, 0] and hist.cumulative()[-1] == (float("inf"), 1)


def test_only_audit_may_send_a_job_back_and_only_to_generate() -> None:
    from tasks.jobs import JobStatus, can_move

    assert can_move(JobStatus.AUDITING, JobStatus.GENERATING)  # a quality regeneration
    assert not can_move(JobStatus.AUDITING, JobStatus.ENCODING)  # the latent is kept: encode never runs again
    assert not can_move(JobStatus.ENHANCING, JobStatus.GENERATING)
    assert not can_move(JobStatus.SUCCEEDED, JobStatus.GENERATING)
