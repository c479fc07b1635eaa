"""Dynamic batching: the batcher's grouping, waiting and failure isolation (with a plain
function as the work), then the same on the real tiny diffusion pipeline — per-item seeds give
the same image batched or alone, mixed shapes split, one bad request fails only itself."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402
from skimage.transform import resize  # noqa: E402

from tasks.batching import GenerateBatcher, GenerateRequest  # noqa: E402
from workers.batching import DynamicBatcher  # noqa: E402
from workers.diffusion import DiffusionEngine, GenerateParams  # noqa: E402
from workers.errors import EngineError  # noqa: E402
from workers.residency import LoadedDiffusion  # noqa: E402
from workers.tiny_model import build_tiny_pipeline  # noqa: E402


class Recorder:
    """The work a batcher runs: doubles numbers, remembers each batch, fails on "bad" items."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list] = []
        self.delay_s = delay_s

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        time.sleep(self.delay_s)
        if any(item[1] == "bad" for item in items):
            raise ValueError("bad item in batch")
        return [item[1] * 2 for item in items]


def submit_all(batcher: DynamicBatcher, items: list) -> list:
    futures = [batcher.submit(item) for item in items]
    return [f.result(timeout=10) for f in futures]


def test_compatible_items_share_a_batch_and_mixed_keys_split() -> None:
    work = Recorder()
    batcher = DynamicBatcher(work, key=lambda item: item[0], max_batch=8, max_wait_s=0.3)
    items = [("64x64", 1), ("32x32", 2), ("64x64", 3), ("32x32", 4), ("64x64", 5)]
    results = submit_all(batcher, items)
    batcher.close()
    assert [r.value for r in results] == [2, 4, 6, 8, 10]  # each caller gets its own result
    assert sorted(sorted(b) for b in work.batches) == [[("32x32", 2), ("32x32", 4)],
                                                      [("64x64", 1), ("64x64", 3), ("64x64", 5)]]
    assert [r.batch_size for r in results] == [3, 2, 3, 2, 3]


def test_a_batch_never_exceeds_max_batch() -> None:
    work = Recorder()
    batcher = DynamicBatcher(work, key=lambda item: item[0], max_batch=3, max_wait_s=0.3)
    results = submit_all(batcher, [("k", i) for i in range(7)])
    batcher.close()
    assert [r.value for r in results] == [i * 2 for i in range(7)]
    assert max(len(b) for b in work.batches) == 3
    assert sum(len(b) for b in work.batches) == 7


def test_a_lone_request_waits_at_most_max_wait() -> None:
    batcher = DynamicBatcher(Recorder(), key=lambda item: item[0], max_batch=8, max_wait_s=0.2)
    started = time.monotonic()
    result = batcher.submit(("k", 1)).result(timeout=10)
    waited = time.monotonic() - started
    batcher.close()
    assert result.batch_size == 1
    assert 0.2 <= waited < 5  # it waited for company, but not forever


def test_a_lone_request_goes_at_once_when_no_other_is_on_its_way() -> None:
    batcher = DynamicBatcher(Recorder(), key=lambda item: item[0], max_batch=8, max_wait_s=60, expected=lambda: 0)
    result = batcher.submit(("k", 1)).result(timeout=10)  # would time out if it waited max_wait
    batcher.close()
    assert result.value == 2


def test_the_batcher_waits_for_requests_said_to_be_on_their_way() -> None:
    coming = [2]
    work = Recorder()
    batcher = DynamicBatcher(work, key=lambda item: item[0], max_batch=8, max_wait_s=5, expected=lambda: coming[0])
    first = batcher.submit(("k", 1))
    time.sleep(0.1)
    assert not first.done()  # two more were announced: it holds the batch open
    rest = []
    for value in (2, 3):
        coming[0] -= 1
        rest.append(batcher.submit(("k", value)))
    results = [f.result(timeout=10) for f in (first, *rest)]
    batcher.close()
    assert [r.batch_size for r in results] == [3, 3, 3]


def test_one_failing_item_does_not_fail_its_batchmates() -> None:
    work = Recorder()
    batcher = DynamicBatcher(work, key=lambda item: item[0], max_batch=8, max_wait_s=0.3)
    futures = [batcher.submit(item) for item in [("k", 1), ("k", "bad"), ("k", 3)]]
    assert futures[0].result(timeout=10).value == 2
    assert futures[2].result(timeout=10).value == 6
    with pytest.raises(ValueError, match="bad item"):
        futures[1].result(timeout=10)
    batcher.close()
    assert len(work.batches[0]) == 3  # tried together first, then one by one
    assert sorted(len(b) for b in work.batches[1:]) == [1, 1, 1]


def test_many_threads_submitting_at_once_all_get_their_own_result() -> None:
    work = Recorder(delay_s=0.01)
    batcher = DynamicBatcher(work, key=lambda item: item[0] % 3, max_batch=4, max_wait_s=0.05)
    results: dict[int, int] = {}

    def caller(i: int) -> None:
        results[i] = batcher.run((i, i)).value

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    batcher.close()
    assert results == {i: i * 2 for i in range(24)}
    assert all(len({item[0] % 3 for item in b}) == 1 for b in work.batches)  # never mixes keys


# --- on the real (tiny) diffusion pipeline ------------------------------------------------------

PARAMS = GenerateParams(prompt="a watercolor astronaut", strength=0.75, steps=4, guidance=7.5, seed=1)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedDiffusion:
    path = build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model", seed=0)
    return LoadedDiffusion(engine=DiffusionEngine.load(str(path)), device="cpu", dtype_name="fp32")


def latents_of(engine: DiffusionEngine, height: int, width: int, *, crop: int = 0) -> torch.Tensor:
    image = (resize(data.astronaut()[crop:], (height, width), anti_aliasing=True) * 255).round().astype(np.uint8)
    return engine.encode(image)


def test_each_seed_gives_the_same_image_batched_or_alone(loaded: LoadedDiffusion) -> None:
    engine = loaded.engine
    latents = [latents_of(engine, 64, 64, crop=c) for c in (0, 40, 80)]
    params = [replace(PARAMS, seed=s, prompt=p) for s, p in ((1, "a cat"), (2, "a dog"), (3, "a cat"))]
    batched = engine.generate_batch(latents, params)
    alone = [engine.generate(lat, p) for lat, p in zip(latents, params, strict=True)]
    for one, other in zip(batched, alone, strict=True):
        assert one.shape == other.shape == (64, 64, 3)
        assert np.abs(one.astype(int) - other.astype(int)).max() <= 2  # float rounding only
    assert np.abs(batched[0].astype(int) - batched[2].astype(int)).mean() > 1  # seeds (and inputs) differ


def test_generate_batch_refuses_items_that_cannot_share_a_call(loaded: LoadedDiffusion) -> None:
    engine = loaded.engine
    with pytest.raises(EngineError, match="split it by batch key"):
        engine.generate_batch([latents_of(engine, 64, 64), latents_of(engine, 32, 64)], [PARAMS, PARAMS])
    with pytest.raises(EngineError, match="split it by batch key"):
        engine.generate_batch([latents_of(engine, 64, 64)] * 2, [PARAMS, replace(PARAMS, steps=8)])


def test_the_generate_batcher_splits_mixed_shapes_and_isolates_a_bad_request(loaded: LoadedDiffusion) -> None:
    engine = loaded.engine
    square, wide = latents_of(engine, 64, 64), latents_of(engine, 32, 64)
    requests = [
        GenerateRequest(job_id="a", latents=square, params=replace(PARAMS, seed=1)),
        GenerateRequest(job_id="b", latents=wide, params=replace(PARAMS, seed=2)),
        GenerateRequest(job_id="c", latents=square, params=replace(PARAMS, seed=3)),
        GenerateRequest(job_id="bad", latents=square, params=replace(PARAMS, seed=-1)),  # same key, invalid
        GenerateRequest(job_id="d", latents=wide, params=replace(PARAMS, seed=4)),
    ]
    batcher = GenerateBatcher(lambda: loaded, max_batch=8, max_wait_s=0.5, expected=lambda: 1)
    futures = {r.job_id: batcher._batcher.submit(r) for r in requests}
    with pytest.raises(EngineError, match="seed must be between"):
        futures["bad"].result(timeout=120)
    results = {job_id: f.result(timeout=120) for job_id, f in futures.items() if job_id != "bad"}
    batcher.close()
    assert {k: r.value.shape for k, r in results.items()} == {"a": (64, 64, 3), "b": (32, 64, 3),
                                                              "c": (64, 64, 3), "d": (32, 64, 3)}
    assert results["b"].batch_size == results["d"].batch_size == 2  # the wide pair shared a call
    alone = engine.generate(square, replace(PARAMS, seed=3))
    assert np.abs(results["c"].value.astype(int) - alone.astype(int)).max() <= 2


def test_progress_is_reported_to_each_member_with_its_own_latents(loaded: LoadedDiffusion) -> None:
    engine = loaded.engine
    seen: dict[str, list[tuple[int, int, tuple]]] = {"a": [], "b": []}

    def reporter(name: str):
        def on_step(done: int, total: int, latents: torch.Tensor) -> bool:
            seen[name].append((done, total, tuple(latents.shape)))
            return False
        return on_step

    square = latents_of(engine, 64, 64)
    batcher = GenerateBatcher(lambda: loaded, max_batch=2, max_wait_s=5, expected=lambda: 1)
    futures = [batcher._batcher.submit(GenerateRequest(job_id=n, latents=square, params=replace(PARAMS, seed=i),
                                                       on_step=reporter(n)))
               for i, n in enumerate(("a", "b"))]
    assert [f.result(timeout=120).batch_size for f in futures] == [2, 2]
    batcher.close()
    steps = PARAMS.denoising_steps
    assert seen["a"] == seen["b"] == [(i, steps, (1, 4, 8, 8)) for i in range(1, steps + 1)]


def test_requests_at_different_dtypes_never_share_a_batch(loaded: LoadedDiffusion,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """One worker serving queues of different precision (PIXELMILL_QUEUE_DTYPES): each request runs
    on the model resident at its own dtype, batched only with requests at that dtype."""
    path = build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-bf16") / "model", seed=0)
    bf16 = LoadedDiffusion(engine=DiffusionEngine.load(str(path), dtype=torch.bfloat16), device="cpu",
                           dtype_name="bf16")
    asked: list[tuple[str | None, str | None]] = []

    def load(model: str | None = None, *, dtype: str | None = None) -> LoadedDiffusion:
        asked.append((model, dtype))
        return {"fp32": loaded, "bf16": bf16}[dtype or "fp32"]

    square = latents_of(loaded.engine, 64, 64)
    requests = [GenerateRequest(job_id=f"{dtype}-{i}", latents=square, params=replace(PARAMS, seed=i), dtype=dtype)
                for i, dtype in enumerate(("fp32", "bf16", "fp32", "bf16"))]
    assert requests[0].batch_key() == requests[2].batch_key() != requests[1].batch_key()
    batcher = GenerateBatcher(load, max_batch=8, max_wait_s=0.5, expected=lambda: 1)
    futures = {r.job_id: batcher._batcher.submit(r) for r in requests}
    results = {job_id: f.result(timeout=120) for job_id, f in futures.items()}
    batcher.close()
    assert {r.batch_size for r in results.values()} == {2}  # a pair per dtype
    assert sorted(asked) == [(None, "bf16"), (None, "fp32")]
    assert {r.job_id: r.ran["backend"] for r in requests} == {"fp32-0": "torch-fp32", "bf16-1": "torch-bf16",
                                                                "fp32-2": "torch-fp32", "bf16-3": "torch-bf16"}
