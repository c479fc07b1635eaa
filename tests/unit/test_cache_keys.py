"""Cache keys see content, not bytes: the false-hit / true-hit measurement on a corpus of real
photos, multi-index hashing, and which parameters are part of the latent key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cache.fingerprint import Fingerprint, Tolerance, chunks, compare, fingerprint, hamming
from cache.keys import EncoderSpec, latent_key_for, result_key, signature
from tests.corpus import DIFFERENT, DIFFERENT_COLOUR, SAME, is_colour, photos
from workers.diffusion import normalise_for_diffusion

WORKING_SIZE = 512  # the default working size: "different" is judged at what the VAE sees
RADIUS = 6          # the default cache_hash_radius


def _fp(image: np.ndarray) -> Fingerprint:
    return fingerprint(normalise_for_diffusion(image, size=WORKING_SIZE))


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict]:
    """For every photo: its fingerprint and the comparison with each of its variants."""
    out: dict[str, dict] = {}
    for name, image in photos().items():
        original = _fp(image)
        variants = dict(SAME) | dict(DIFFERENT) | (dict(DIFFERENT_COLOUR) if is_colour(image) else {})
        out[name] = {"fp": original,
                     "variants": {label: compare(original, _fp(make(image))) for label, make in variants.items()}}
    return out


def test_corpus_is_the_shipped_photos(corpus) -> None:
    assert len(corpus) >= 16  # 15 scikit-image photos + 2 scikit-learn ones
    assert {"astronaut", "coffee", "chelsea", "camera", "china", "flower"} <= corpus.keys()


@pytest.mark.parametrize("label", sorted(SAME))
def test_same_picture_re_saved_converted_or_resized_hits(corpus, label: str) -> None:
    misses = {name: s for name, entry in corpus.items() if not (s := entry["variants"][label]).same}
    assert not misses, f"{label}: should hit, missed on {misses}"
    assert all(entry["variants"][label].distance <= RADIUS for entry in corpus.values()), "pHash left the bucket"


@pytest.mark.parametrize("label", sorted(DIFFERENT | DIFFERENT_COLOUR))
def test_a_different_picture_misses(corpus, label: str) -> None:
    hits = {name: s for name, entry in corpus.items()
            if label in entry["variants"] and (s := entry["variants"][label]).same}
    assert not hits, f"{label}: a false hit would serve a picture made from a different image: {hits}"


def test_other_photos_miss_even_in_the_same_bucket(corpus) -> None:
    names = sorted(corpus)
    pairs = [(a, b) for a in names for b in names if a < b]
    false_hits = [(a, b) for a, b in pairs if compare(corpus[a]["fp"], corpus[b]["fp"]).same]
    assert not false_hits


def test_false_hit_rate_is_zero_and_true_hit_rate_is_one(corpus) -> None:
    same = [s for e in corpus.values() for label, s in e["variants"].items() if label in SAME]
    different = [s for e in corpus.values() for label, s in e["variants"].items() if label not in SAME]
    names = sorted(corpus)
    different += [compare(corpus[a]["fp"], corpus[b]["fp"]) for a in names for b in names if a < b]
    in_bucket = [s for s in different if s.distance <= RADIUS]
    true_hit_rate = sum(s.same for s in same) / len(same)
    false_hit_rate = sum(s.same for s in different) / len(different)
    worst_same = max(s.score for s in same)
    closest_different = min(s.score for s in different)
    print(f"\nlatent cache corpus at {WORKING_SIZE} px: {len(corpus)} photos, {len(same)} same-picture variants, "
          f"{len(different)} different pictures ({len(in_bucket)} of them in the same pHash bucket, r={RADIUS})\n"
          f"true-hit rate {true_hit_rate:.1%}, false-hit rate {false_hit_rate:.1%}; "
          f"score (<= 1 is a hit): worst same {worst_same:.2f}, closest different {closest_different:.2f}")
    assert true_hit_rate == 1.0 and false_hit_rate == 0.0
    assert len(in_bucket) > 50, "the corpus should put many different pictures in the same bucket"


def test_the_tolerance_can_be_tightened(corpus) -> None:
    strict = Tolerance(colour=0.1, residual=0.2, residual_p99=0.5, smooth=0.5, detail_p90=0.8)
    a = corpus["astronaut"]["fp"]
    b = _fp(SAME["jpeg-q80"](photos()["astronaut"]))
    assert compare(a, b).same and compare(a, b, tolerance=strict).score > compare(a, b).score


# --- multi-index hashing ----------------------------------------------------------------------

@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_multi_index_chunks_find_every_hash_within_the_radius(radius: int) -> None:
    rng = np.random.default_rng(radius)
    for _ in range(200):
        a = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=radius, replace=False)
        b = a
        for bit in flips:
            b ^= 1 << int(bit)
        assert hamming(a, b) == radius
        assert set(chunks(a, radius=radius)) & set(chunks(b, radius=radius)), "pigeonhole: one chunk must match"
    widths = [c for c in chunks(2**64 - 1, radius=radius)]
    assert sum(v.bit_count() for _, v in widths) == 64


def test_hash_radius_is_checked() -> None:
    with pytest.raises(ValueError, match="radius"):
        chunks(0, radius=40)


def test_fingerprint_round_trips_as_safetensors_not_pickle() -> None:
    fp = _fp(photos()["coffee"])
    data = fp.to_bytes()
    assert b"pickle" not in data and data[8:9] == b"{"
    back = Fingerprint.from_bytes(data)
    assert back.digest == fp.digest and back.phash == fp.phash and back.shape == fp.shape
    np.testing.assert_array_equal(back.thumb, fp.thumb)
    assert compare(fp, back).same and compare(fp, back).score == 0


# --- what the latent key sees ---------------------------------------------------------------

SPEC = EncoderSpec(model="runwayml/sd15", revision="main", dtype="fp16", size=512)


def _key(spec: EncoderSpec = SPEC, *, pixels: str = "p" * 64, shape=(512, 512), scope: str = "tenant:a") -> str:
    return latent_key_for(spec, pixels=pixels, shape=shape, scope=scope)


@pytest.mark.parametrize("change", [
    {"model": "other/model"}, {"revision": "v2"}, {"dtype": "fp32"}, {"size": 768},
    {"crop": "center"}, {"rotation": 90},
])
def test_encoder_parameters_are_part_of_the_latent_key(change: dict) -> None:
    assert _key(replace(SPEC, **change)) != _key()
    assert replace(SPEC, **change).signature() != SPEC.signature()


def test_pixels_shape_and_scope_are_part_of_the_latent_key() -> None:
    assert _key(pixels="q" * 64) != _key()
    assert _key(shape=(512, 504)) != _key()
    assert _key(scope="tenant:b") != _key() and _key(scope="shared") != _key()


def test_generation_parameters_are_not_part_of_the_latent_key() -> None:
    from tasks.caching import encoder_spec
    from tasks.jobs import JobParams

    class Engine:
        model, revision = "m", None

    class Loaded:
        engine, dtype_name = Engine(), "fp32"

    base = JobParams(engine="diffusion", prompt="a cat", size=512, seed=1)
    for change in ({"prompt": "a tiger"}, {"negative_prompt": "blurry"}, {"guidance": 3.0}, {"steps": 40},
                   {"strength": 0.9}, {"seed": 2}):
        assert encoder_spec(base.model_copy(update=change), Loaded()) == encoder_spec(base, Loaded())
    assert encoder_spec(base.model_copy(update={"size": 256}), Loaded()) != encoder_spec(base, Loaded())


def test_result_key_sees_every_generation_parameter_and_needs_a_seed() -> None:
    params = {"prompt": "a cat", "negative_prompt": "", "strength": 0.5, "steps": 4, "guidance": 7.5, "seed": 3}
    key = result_key(latent_ref="t:abc", model="m", revision=None, dtype="fp32", params=params)
    assert key == result_key(latent_ref="t:abc", model="m", revision=None, dtype="fp32", params=dict(params))
    for change in ({"prompt": "x"}, {"negative_prompt": "x"}, {"strength": 0.6}, {"steps": 5}, {"guidance": 1.0},
                   {"seed": 4}):
        assert result_key(latent_ref="t:abc", model="m", revision=None, dtype="fp32", params=params | change) != key
    assert result_key(latent_ref="t:abd", model="m", revision=None, dtype="fp32", params=params) != key
    assert result_key(latent_ref="t:abc", model="m", revision=None, dtype="fp32", params=params | {"seed": None}) is None


def test_signature_is_canonical() -> None:
    assert signature({"a": 1, "b": [1, 2]}) == signature({"b": [1, 2], "a": 1})
