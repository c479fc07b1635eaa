"""DiffusionEngine, normalise_for_diffusion and device selection, on a tiny random-weight pipeline."""

import os

# huggingface_hub reads this when first imported, so set it before diffusers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"

from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402
from skimage.transform import resize  # noqa: E402

from workers.tiny_model import build_tiny_pipeline  # noqa: E402
from workers.devices import default_dtype, dtype_name, pick_device  # noqa: E402
from workers.diffusion import DiffusionEngine, GenerateParams, normalise_for_diffusion  # noqa: E402
from workers.errors import EngineError, Interrupted, ModelLoadError  # noqa: E402

FAST = GenerateParams(prompt="an astronaut on the moon", strength=1.0, steps=4, seed=7)


def photo(height: int, width: int) -> np.ndarray:
    """The scikit-image astronaut photo resized to height x width, uint8 RGB."""
    return (resize(data.astronaut(), (height, width), anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model", seed=0)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> DiffusionEngine:
    return DiffusionEngine.load(str(model_dir))


@pytest.fixture(scope="module")
def latents(engine: DiffusionEngine) -> torch.Tensor:
    return engine.encode(photo(64, 64))


def test_tiny_pipeline_saves_and_loads(model_dir: Path, engine: DiffusionEngine) -> None:
    assert (model_dir / "model_index.json").is_file()
    assert engine.model == str(model_dir)
    assert engine.revision is None
    assert (engine.device, engine.dtype, engine.vae_scale_factor) == ("cpu", torch.float32, 8)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 64)])
def test_encode_gives_deterministic_float32_latents(engine: DiffusionEngine, height: int, width: int) -> None:
    image = photo(height, width)
    first = engine.encode(image)
    assert first.shape == (1, 4, height // 8, width // 8)
    assert first.dtype == torch.float32 and first.device.type == "cpu"
    assert torch.equal(first, engine.encode(image))


def test_encode_rejects_sides_that_are_not_multiples_of_the_scale_factor(engine: DiffusionEngine) -> None:
    with pytest.raises(EngineError, match="multiples of 8"):
        engine.encode(photo(60, 64))


def test_encode_rejects_images_that_are_not_rgb_uint8(engine: DiffusionEngine) -> None:
    with pytest.raises(EngineError, match="HxWx3 uint8"):
        engine.encode(np.zeros((64, 64, 4), dtype=np.uint8))


def test_generate_returns_an_image_of_the_input_size(engine: DiffusionEngine) -> None:
    out = engine.generate(engine.encode(photo(96, 64)), FAST)
    assert out.shape == (96, 64, 3) and out.dtype == np.uint8


def test_generate_is_deterministic_for_a_seed(engine: DiffusionEngine, latents: torch.Tensor) -> None:
    np.testing.assert_array_equal(engine.generate(latents, FAST), engine.generate(latents, FAST))


@pytest.mark.parametrize("change", [{"seed": 8}, {"prompt": "a red fox in the snow"}])
def test_generate_depends_on_seed_and_prompt(
    engine: DiffusionEngine, latents: torch.Tensor, change: dict[str, object]
) -> None:
    assert not np.array_equal(engine.generate(latents, FAST), engine.generate(latents, replace(FAST, **change)))


def test_decode_returns_an_image_of_the_input_size(engine: DiffusionEngine, latents: torch.Tensor) -> None:
    out = engine.decode(latents)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_on_step_reports_each_denoising_step(engine: DiffusionEngine, latents: torch.Tensor) -> None:
    calls: list[tuple[int, int]] = []
    params = replace(FAST, steps=10, strength=0.5)
    engine.generate(latents, params, on_step=lambda done, total, _latents: calls.append((done, total)))
    assert params.denoising_steps == 5
    assert calls == [(done, 5) for done in range(1, 6)]


def test_on_step_returning_true_interrupts(engine: DiffusionEngine, latents: torch.Tensor) -> None:
    calls: list[int] = []

    def stop_at_two(done: int, total: int, _latents: torch.Tensor) -> bool:
        calls.append(done)
        return done == 2

    with pytest.raises(Interrupted, match="2 of 4"):
        engine.generate(latents, FAST, on_step=stop_at_two)
    assert calls == [1, 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strength": 0.0}, "strength must be in"),
        ({"strength": 1.5}, "strength must be in"),
        ({"steps": 0}, "steps must be between"),
        ({"steps": 201}, "steps must be between"),
        ({"guidance": -1.0}, "guidance must be between"),
        ({"guidance": 51.0}, "guidance must be between"),
        ({"seed": -1}, "seed must be between"),
        ({"steps": 3, "strength": 0.2}, "raise steps or strength"),
    ],
)
def test_generate_rejects_bad_params(
    engine: DiffusionEngine, latents: torch.Tensor, change: dict[str, object], message: str
) -> None:
    with pytest.raises(EngineError, match=message):
        engine.generate(latents, replace(FAST, **change))


def test_generate_rejects_latents_of_the_wrong_shape(engine: DiffusionEngine) -> None:
    with pytest.raises(EngineError, match="expected latents of shape"):
        engine.generate(torch.zeros(1, 3, 8, 8), FAST)


def test_loading_a_missing_folder_says_what_to_set(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="PIXELMILL_DIFFUSION_MODEL") as caught:
        DiffusionEngine.load(missing)
    assert missing in str(caught.value)


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((600, 1000, 3), 512, (304, 512, 3)),
        ((1000, 600, 3), 512, (512, 304, 3)),
        ((512, 512, 3), 512, (512, 512, 3)),
        ((100, 70, 3), 64, (64, 40, 3)),
    ],
)
def test_normalise_for_diffusion_sizes(shape: tuple[int, int, int], size: int, expected: tuple[int, int, int]) -> None:
    out = normalise_for_diffusion(np.zeros(shape, dtype=np.uint8), size=size)
    assert out.shape == expected and out.dtype == np.uint8


def test_normalise_for_diffusion_keeps_an_aligned_image_unchanged() -> None:
    image = photo(64, 96)
    np.testing.assert_array_equal(normalise_for_diffusion(image, size=96), image)


@pytest.mark.parametrize(("shape", "size"), [((64, 64, 3), 4), ((1000, 10, 3), 64)])
def test_normalise_for_diffusion_rejects_impossible_sizes(shape: tuple[int, int, int], size: int) -> None:
    with pytest.raises(EngineError):
        normalise_for_diffusion(np.zeros(shape, dtype=np.uint8), size=size)


def test_pick_device_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == "cpu"
    for wanted in ("cuda", "cuda:0", "mps"):
        with pytest.raises(EngineError, match="not available|no usable CUDA"):
            pick_device(wanted)


def test_pick_device_rejects_unknown_names() -> None:
    with pytest.raises(EngineError, match="unknown device"):
        pick_device("tpu")


def test_default_dtype_and_names() -> None:
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda:1") == torch.float16
    assert default_dtype("cpu", "bf16") == torch.bfloat16
    assert [dtype_name(t) for t in (torch.float32, torch.float16, torch.bfloat16)] == ["fp32", "fp16", "bf16"]
    with pytest.raises(EngineError, match="unknown dtype"):
        default_dtype("cpu", "fp8")
