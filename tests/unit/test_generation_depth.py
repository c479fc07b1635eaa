"""Generation depth on the tiny library: ControlNets (one and several), LoRAs (switched and kept
in an LRU), clip_skip, single-file checkpoints, control maps, the depth model, model slots and the
prompt-embedding cache — each against the plain engine, with the same seed."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402
from skimage.transform import resize  # noqa: E402

from cache.backend import Backend  # noqa: E402
from cache.keys import PromptSpec  # noqa: E402
from cache.scopes import scope_for  # noqa: E402
from cache.service import CacheConfig, LatentCache  # noqa: E402
from workers.adapters import LoraUse  # noqa: E402
from workers.control_maps import canny_map, control_map, tile_map  # noqa: E402
from workers.controlnet import ControlUse  # noqa: E402
from workers.depth import DepthEstimator  # noqa: E402
from workers.diffusion import DiffusionEngine, GenerateParams  # noqa: E402
from workers.errors import EngineError  # noqa: E402
from workers.prompts import encode_prompts  # noqa: E402
from workers.residency import ModelSlots  # noqa: E402

PARAMS = GenerateParams(prompt="a watercolor astronaut", strength=0.75, steps=4, guidance=7.5, seed=3)


def photo(name: str = "astronaut", size: int = 64) -> np.ndarray:
    image = getattr(data, name)()[..., :3]
    return (resize(image, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.tiny_model import build_tiny_library

    return build_tiny_library(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def engine(library: Path) -> DiffusionEngine:
    return DiffusionEngine.load(str(library / "tiny"))


@pytest.fixture(scope="module")
def latents(engine: DiffusionEngine) -> torch.Tensor:
    return engine.encode(photo())


def lora(library: Path, weight: float = 1.0) -> LoraUse:
    return LoraUse(name="tiny-style", path=str(library / "loras" / "tiny-style.safetensors"), weight=weight,
                   fingerprint="f", text_encoder=True)


def control(library: Path, kind: str, **kwargs) -> ControlUse:
    return ControlUse(name=kind, path=str(library / "controlnets" / kind), fingerprint=kind, type=kind, **kwargs)


def test_a_controlnet_changes_the_image_and_the_same_seed_reproduces_it(engine, latents, library) -> None:
    plain = engine.generate(latents, PARAMS)
    canny = replace(PARAMS, controls=(control(library, "canny"),))
    guided = engine.generate(latents, canny, control_images=[canny_map(photo())])
    assert differs(guided, plain) > 2
    assert np.array_equal(engine.generate(latents, canny, control_images=[canny_map(photo())]), guided)
    assert np.array_equal(engine.generate(latents, PARAMS), plain)  # the plain pipeline is untouched
    weak = engine.generate(latents, replace(PARAMS, controls=(control(library, "canny", scale=0.0),)),
                           control_images=[canny_map(photo())])
    assert differs(weak, plain) < 1  # scale 0: the ControlNet adds nothing


def test_several_controlnets_guide_one_call_and_a_batch_matches_solo_runs(engine, library) -> None:
    images = [photo("astronaut"), photo("coffee")]
    lat = [engine.encode(image) for image in images]
    controls = (control(library, "canny"), control(library, "tile", scale=0.6, start=0.0, end=0.5))
    params = [replace(PARAMS, seed=s, prompt=p, controls=controls, loras=(lora(library, 0.8),))
              for s, p in ((1, "a cat"), (2, "a dog"))]
    maps = [[canny_map(image), tile_map(image)] for image in images]
    batched = engine.generate_batch(lat, params, control_images=maps)
    for i in range(2):
        alone = engine.generate(lat[i], params[i], control_images=maps[i])
        assert np.abs(batched[i].astype(int) - alone.astype(int)).max() <= 2
    with pytest.raises(EngineError, match="control map"):
        engine.generate(lat[0], params[0], control_images=[canny_map(images[0])])  # one map for two ControlNets
    with pytest.raises(EngineError, match="split it by batch key"):
        engine.generate_batch(lat, [params[0], replace(params[1], controls=controls[:1])], control_images=maps)


def test_a_lora_changes_the_image_and_switching_it_off_gives_the_plain_model_back(engine, latents, library) -> None:
    plain = engine.generate(latents, PARAMS)
    styled = engine.generate(latents, replace(PARAMS, loras=(lora(library),)))
    assert differs(styled, plain) > 2
    assert np.array_equal(engine.generate(latents, PARAMS), plain)
    assert np.array_equal(engine.generate(latents, replace(PARAMS, loras=(lora(library, 0.0),))), plain)
    assert np.array_equal(engine.generate(latents, replace(PARAMS, loras=(lora(library),))), styled)
    half = engine.generate(latents, replace(PARAMS, loras=(lora(library, 0.5),)))
    assert 0 < differs(half, plain) < differs(styled, plain) + 5


def test_loaded_loras_are_kept_in_a_least_recently_used_set(library, latents) -> None:
    engine = DiffusionEngine.load(str(library / "tiny"), lora_slots=1)
    other = library / "loras-extra"
    other.mkdir(exist_ok=True)
    from workers.tiny_model import build_tiny_lora

    second = LoraUse(name="second", path=str(build_tiny_lora(other / "second.safetensors", seed=99)), fingerprint="s")
    engine.generate(latents, replace(PARAMS, loras=(lora(library),)))
    engine.generate(latents, replace(PARAMS, loras=(lora(library, 0.3),)))  # another weight: no new load
    assert engine.loras.loads == 1 and engine.loras.loaded == ["tiny-style"]
    engine.generate(latents, replace(PARAMS, loras=(second,)))
    assert engine.loras.loaded == ["second"] and engine.loras.loads == 2  # one slot: the first went
    with pytest.raises(EngineError, match="PIXELMILL_LORA_SLOTS"):
        engine.generate(latents, replace(PARAMS, loras=(lora(library), second)))


def test_a_lora_for_another_base_fails_the_call_not_the_engine(library, engine, latents) -> None:
    from workers.tiny_model import build_tiny_lora

    path = build_tiny_lora(library / "loras-extra" / "wide.safetensors", cross_attention_dim=48, text_encoder=False)
    with pytest.raises(EngineError, match="could not be loaded"):
        engine.generate(latents, replace(PARAMS, loras=(LoraUse(name="wide", path=str(path), fingerprint="w"),)))
    assert np.array_equal(engine.generate(latents, PARAMS), engine.generate(latents, PARAMS))


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(engine) -> None:
    pipe = engine._pipe
    with torch.inference_mode():
        expected, negative = pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="blurry")
    ours = encode_prompts(pipe, "a cat", "blurry")
    assert torch.equal(ours.prompt, expected) and torch.equal(ours.negative, negative)  # clip_skip 0: the same
    skipped = encode_prompts(pipe, "a cat", "blurry", clip_skip=1)
    assert skipped.prompt.shape == expected.shape and not torch.allclose(skipped.prompt, expected)
    with pytest.raises(EngineError, match="clip_skip must be between 0 and 4"):
        encode_prompts(pipe, "a cat", "", clip_skip=5)


def test_prompt_embeddings_passed_in_give_the_image_the_prompt_gives(engine, latents, library) -> None:
    p = replace(PARAMS, clip_skip=1, loras=(lora(library),))
    embeds = engine.encode_prompt(p.prompt, p.negative_prompt, clip_skip=1, loras=p.loras)
    assert np.array_equal(engine.generate(latents, p, embeds=embeds), engine.generate(latents, p))
    assert not torch.equal(embeds.prompt, engine.encode_prompt(p.prompt, clip_skip=1).prompt)  # its text LoRA


def test_a_single_file_checkpoint_loads_offline_with_its_config_and_gives_the_same_image(library, engine,
                                                                                          latents) -> None:
    single = DiffusionEngine.load(str(library / "tiny-single.safetensors"), config=str(library / "configs" / "ca32"))
    assert np.array_equal(single.generate(latents, PARAMS), engine.generate(latents, PARAMS))
    with pytest.raises(EngineError, match="configs"):
        DiffusionEngine.load(str(library / "tiny-single.safetensors"))  # no config: it would need the hub


def test_control_maps_are_deterministic_and_the_size_of_the_input(library) -> None:
    image = photo(size=96)
    edges = canny_map(image)
    assert edges.shape == (96, 96, 3) and set(np.unique(edges)) <= {0, 255} and edges.mean() > 1
    assert np.array_equal(canny_map(image), edges)
    assert canny_map(np.full((64, 64, 3), 7, np.uint8)).max() == 0  # a flat image has no edges
    tile = tile_map(image)
    assert tile.shape == image.shape and np.abs(tile.astype(int) - image).mean() < 40  # colours kept, detail gone
    estimator = DepthEstimator.load(library / "depth" / "tiny-depth")
    depth = control_map("depth", image, depth=estimator)
    assert depth.shape == (96, 96, 3) and depth.dtype == np.uint8 and depth.max() == 255 and depth.min() == 0
    assert np.array_equal(control_map("depth", image, depth=estimator), depth)
    assert estimator.input_size(96, 128) == (70, 98)  # patch multiples, aspect ratio kept
    with pytest.raises(EngineError, match="depth model"):
        control_map("depth", image)


def test_model_slots_keep_the_most_recently_used() -> None:
    slots: ModelSlots[str] = ModelSlots()
    loads: list[str] = []

    def loader(name: str):
        return lambda: loads.append(name) or name

    for name in ("a", "b", "a", "c", "a", "b"):
        slots.get(name, loader(name), slots=2)
    assert loads == ["a", "b", "c", "b"] and slots.keys() == ["a", "b"] and slots.latest() == "b"


# --- the prompt-embedding cache (a real Redis) --------------------------------------------------------------

@pytest.fixture
def cache_redis(redis_server):
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/6")
    client.flushdb()
    yield client
    client.close()


def new_cache(client: redis.Redis) -> LatentCache:
    """A cache as one worker process has it (its own hot tier)."""
    return LatentCache(Backend(client), config=CacheConfig(latent_ttl_s=600, result_ttl_s=600))


def spec(prompt: str, **changes) -> PromptSpec:
    return PromptSpec(**({"model": "tiny", "revision": "r1", "dtype": "fp32", "prompt": prompt,
                          "negative_prompt": ""} | changes))


def test_a_repeated_prompt_is_a_hit_hot_then_in_another_worker_from_redis(cache_redis, engine) -> None:
    scope = scope_for(tenant="a", mode="tenant")
    calls: list[str] = []

    def compute(text: str):
        def run():
            calls.append(text)
            return engine.encode_prompt(text).as_dict()
        return run

    worker = new_cache(cache_redis)
    first = worker.fetch_or_compute_prompt(spec("a cat"), scope=scope, compute=compute("a cat"))
    again = worker.fetch_or_compute_prompt(spec("a cat"), scope=scope, compute=compute("a cat"))
    elsewhere = new_cache(cache_redis).fetch_or_compute_prompt(spec("a cat"), scope=scope, compute=compute("a cat"))
    assert (first.tier, again.tier, elsewhere.tier) == (None, "hot", "redis") and calls == ["a cat"]
    assert first.stored_bytes > 0 and cache_redis.ttl(next(cache_redis.scan_iter("*:prompt:*"))) > 0
    for outcome in (again, elsewhere):
        assert torch.equal(outcome.tensors["prompt"], first.tensors["prompt"])
        assert torch.equal(outcome.tensors["negative"], first.tensors["negative"])
    other_tenant = worker.fetch_or_compute_prompt(spec("a cat"), scope=scope_for(tenant="b", mode="tenant"),
                                                  compute=compute("a cat"))
    assert other_tenant.tier is None  # scoped per tenant, like latents
    assert worker.entries(scope)["prompt"] == 1
    stats = worker.stats.snapshot(scope.token)["stages"]["prompt"]
    assert stats["lookup"]["hits"] == 2 and stats["lookup"]["misses"] == 1
    worker.clear(scope)
    assert worker.fetch_or_compute_prompt(spec("a cat"), scope=scope, compute=compute("a cat")).tier is None


def test_every_change_that_matters_is_its_own_entry() -> None:
    base = spec("a cat")
    changes = [{"prompt": "a cat "}, {"prompt": "A cat"}, {"negative_prompt": "blurry"}, {"clip_skip": 1},
               {"model": "tiny-single"}, {"revision": "r2"}, {"dtype": "fp16"},
               {"text_loras": (("tiny-style", "f", 1.0),)}, {"text_loras": (("tiny-style", "f", 0.5),)}]
    keys = {replace(base, **c).key(generation="0") for c in changes} | {base.key(generation="0")}
    assert len(keys) == len(changes) + 1
    assert base.key(generation="0") != base.key(generation="1")  # a cleared scope starts over


def test_over_a_corpus_of_prompts_no_two_share_an_entry(cache_redis, engine) -> None:
    """Near-identical prompts (case, spacing, punctuation, word order, unicode) each get their own
    embeddings back — never another prompt's."""
    subjects = ("a cat", "a dog", "an astronaut", "a red cup", "a castle")
    styles = ("", " in watercolor", ", watercolor", " in Watercolor", "  in watercolor", " in watercolour",
              " at night", " at night.", " – at night")
    corpus = [s + t for s in subjects for t in styles] + ["a cat in watercolor".upper(), "cat a in watercolor",
                                                            "a café", "a cafe", "a cat\u00a0in watercolor"]
    assert len(set(corpus)) == len(corpus)
    scope = scope_for(tenant="corpus", mode="tenant")
    writer = new_cache(cache_redis)
    expected = {}
    for text in corpus:
        expected[text] = writer.fetch_or_compute_prompt(spec(text), scope=scope,
                                                        compute=lambda t=text: engine.encode_prompt(t).as_dict())
    assert writer.entries(scope)["prompt"] == len(corpus)
    reader = new_cache(cache_redis)  # from Redis: an empty hot tier
    for text in reversed(corpus):  # another order: a mix-up of entries would show
        got = reader.fetch_or_compute_prompt(spec(text), scope=scope, compute=lambda: pytest.fail("a miss"))
        assert got.tier == "redis"
        assert torch.equal(got.tensors["prompt"], engine.encode_prompt(text).prompt), text  # its own, computed now
    # CLIP's tokenizer folds case and spacing, so some of these embed alike; their entries stay apart anyway
    assert len({expected[t].tensors["prompt"].numpy().tobytes() for t in corpus}) > len(corpus) // 2
