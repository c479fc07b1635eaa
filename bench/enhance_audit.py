"""What enhance and audit add to a job, one section of docs/benchmarks.md each:

- ``faces``: face restoration per face on the CPU — the YuNet detector through cv2.FaceDetectorYN,
  alignment to the FFHQ template, the restorer's onnxruntime session, blend and paste back — on the
  tiny face models (workers/tiny_faces.py), so the figures are the pipeline's own cost around the
  restorer network (a real GFPGAN v1.4 adds its own forward pass per face on top).

- ``clipscore``: CLIPScore per image on the CPU — the tiny CLIP, and a ViT-B/32-size CLIPModel with
  random weights (the real model's cost) — beside sharpness and the pHash distance.

    .venv/bin/python bench/enhance_audit.py [--section faces|clipscore] [--rounds 30] [--threads 1] [--no-write]

Each section is one ``measure_<name>(args) -> Section`` function; ``main`` runs the ones asked for,
prints their tables and writes each between its markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import machine, table as markdown_table, write_section  # noqa: E402


@dataclass
class Section:
    name: str       # the marker in docs/benchmarks.md: <!-- name:start -->
    table: str      # printed
    block: str      # written


def timed_ms(fn: Callable[[], object], *, rounds: int) -> tuple[float, float, float]:
    """Median, min and max of ``rounds`` calls of ``fn``, in milliseconds (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), min(samples), max(samples)


def timing_table(header: tuple[str, ...], rows: list[tuple], *, align: str) -> str:
    """``rows`` of (label, median, min, max, *more) in ms: the markdown table, a range column for min–max."""
    return markdown_table(header, [(label, f"{med:.2f}", f"{low:.2f}–{high:.2f}", *more)
                                   for label, med, low, high, *more in rows], align=align)


def provenance(args: argparse.Namespace, *, threads: str, load_start: float, elapsed: float,
               script: str = "bench/enhance_audit.py") -> str:
    """The section's first line: machine, threads, load, command, date; ends after "a warm-up"."""
    command = " ".join([f".venv/bin/python {script}", *sys.argv[1:]])
    return (f"Machine: {machine()}, {threads}; load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} "
            f"at the end. Command: `{command}`; all figures from one run ({time.strftime('%Y-%m-%d')}, "
            f"{elapsed:.0f} s), medians of {args.rounds} calls after a warm-up")


# --- faces ------------------------------------------------------------------------------------------

def tiny_face_models(*, device: str = "cpu", threads: int | None = None):
    """The tiny restorer (an onnxruntime session for ``device``: CUDA where onnxruntime has it) and the
    tiny YuNet-compatible detector (workers/tiny_faces.py), loaded as enhance loads them."""
    from workers.faces import load_detector, load_restorer
    from workers.tiny_faces import build_tiny_restorer, build_tiny_yunet

    with tempfile.TemporaryDirectory(prefix="pixelmill-faces-bench-") as scratch:
        restorer = load_restorer(str(build_tiny_restorer(Path(scratch) / "tiny-restorer.onnx")),
                                 device=device, threads=threads)
        detector = load_detector(str(build_tiny_yunet(Path(scratch) / "tiny-yunet.onnx")))
    return restorer, detector


def face_rows(restorer, detector, *, rounds: int) -> list[tuple[str, float, float, float, str]]:
    """(step, median, min, max ms, per): detect, align, restorer session, blend + paste back, and the
    whole restore_faces on a 512² image with one face, then four."""
    from workers.faces import align, blend, paste_back, restore_faces
    from workers.tiny_faces import draw_tiny_face

    one = np.full((512, 512, 3), 120, np.uint8)
    draw_tiny_face(one, x=192, y=192)
    four = np.full((512, 512, 3), 120, np.uint8)
    for x, y in ((32, 32), (320, 32), (32, 320), (320, 320)):
        draw_tiny_face(four, x=x, y=y)
    (face,) = detector.detect(one)
    crop, affine = align(one, face.landmarks5)
    fixed = restorer.restore(crop)
    assert len(detector.detect(four)) == 4

    rows: list[tuple[str, float, float, float, str]] = []
    for label, fn, per in (
            ("detect (FaceDetectorYN, tiny YuNet), per image", lambda: detector.detect(one), "image"),
            ("align to the FFHQ 512 template", lambda: align(one, face.landmarks5), "face"),
            ("restorer session (tiny ONNX, 512² in and out, with normalisation)", lambda: restorer.restore(crop),
             "face"),
            ("blend + paste back (feathered mask)", lambda: paste_back(one, blend(crop, fixed, 0.5), affine), "face"),
            ("restore_faces, 1 face, whole", lambda: restore_faces(one, detector=detector, restorer=restorer,
                                                                   weight=0.5), "face")):
        rows.append((label, *timed_ms(fn, rounds=rounds), per))
    whole4 = timed_ms(lambda: restore_faces(four, detector=detector, restorer=restorer, weight=0.5), rounds=rounds)
    rows.append(("restore_faces, 4 faces, whole ÷ 4", *(v / 4 for v in whole4), "face"))
    return rows


FACE_HEADER = ("step", "median ms", "range ms", "per")


def measure_faces(args: argparse.Namespace) -> Section:
    """Per face: detect, align, restorer session, blend + paste back, and the whole restore_faces."""
    import cv2

    cv2.setNumThreads(args.threads)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    restorer, detector = tiny_face_models(device="cpu", threads=args.threads)
    rows = face_rows(restorer, detector, rounds=args.rounds)
    elapsed = time.perf_counter() - started

    table = timing_table(FACE_HEADER, rows, align="lrrl")
    overhead = rows[4][1] - rows[2][1]
    block = "\n".join([
        "## Face restoration per face on the CPU (`bench/enhance_audit.py`, section faces)",
        "",
        provenance(args, threads=f"{args.threads} thread(s) for OpenCV and onnxruntime", load_start=load_start,
                   elapsed=elapsed) + ".",
        "",
        "A 512×512 RGB image with one face (four for the last row) that the tiny YuNet-compatible detector finds, "
        "through `workers/faces.py` exactly as the enhance stage runs it: the detector is cv2.FaceDetectorYN "
        "on the tiny model, the restorer an onnxruntime session (CPUExecutionProvider) of the tiny residual "
        "conv net (workers/tiny_faces.py), weight 0.5.",
        "",
        table,
        "",
        f"Reading: around the restorer network, the pipeline costs about {overhead:.1f} ms per face at 512 px "
        "(detect, align, blend and paste back; the whole row less the restorer session row). The restorer row is "
        "the tiny net (two 3×3 convolutions, 432 weights, about 0.2 GFLOP per 512² face) with its [-1, 1] NCHW "
        "conversion: it stands in for the network. A real GFPGAN v1.4 ONNX export (a StyleGAN2-based decoder, "
        "far more compute per face) costs its own forward pass instead, not measured here: no such weights are "
        "on this machine, and a random net of another architecture would not cost the same. The tiny detector "
        "is cheaper than the real YuNet, so the detect row is a lower bound per image.",
    ])
    return Section(name="faces", table=table, block=block)


# --- clipscore ---------------------------------------------------------------------------------------

CLIP_IMAGE, CLIP_PROMPT = "astronaut", "an astronaut in a white suit holding a flag, studio photo"


def tiny_clip_and_vit_b32(*, device: str = "cpu", dtype=None):
    """The tiny CLIP (workers/tiny_model.py) on the CPU, a ViT-B/32-size ClipScorer with random weights on
    ``device`` at ``dtype`` (fp32 by default) — openai/clip-vit-base-patch32's shapes, so its cost — and
    the latter's parameters in millions."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from workers.clip_score import CLIP_MEAN, CLIP_STD, ClipScorer
    from workers.tiny_model import build_byte_tokenizer, build_tiny_clip

    with tempfile.TemporaryDirectory(prefix="pixelmill-clip-bench-") as scratch:
        tiny = ClipScorer.load(build_tiny_clip(Path(scratch) / "tiny-clip"))
        tokenizer = build_byte_tokenizer(Path(scratch))
    config = CLIPConfig()  # the defaults are openai/clip-vit-base-patch32's shapes
    config.text_config.bos_token_id, config.text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).to(device=device, dtype=dtype or torch.float32)
    base = ClipScorer(model, tokenizer, size=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD, device=device,
                      name="vit-b-32 random")
    return tiny, base, sum(p.numel() for p in model.parameters()) / 1e6


def measure_clipscore(args: argparse.Namespace) -> Section:
    """CLIPScore per image on the CPU (the tiny CLIP, and a ViT-B/32-size CLIPModel with random weights:
    the real model's cost), beside audit's cheap signals (sharpness, pHash distance)."""
    import torch

    from safety.scores import phash_distance, sharpness
    from tests.conftest import photo

    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    tiny, base, params_m = tiny_clip_and_vit_b32()
    image, prompt = photo(CLIP_IMAGE, size=512), CLIP_PROMPT
    other = photo("coffee", size=512)
    batch = [image] * 8

    rows: list[tuple[str, float, float, float]] = [
        ("tiny CLIP (hidden 32, 2 layers, 32 px): score, 512² image", *timed_ms(lambda: tiny.score(image, prompt),
                                                                                 rounds=args.rounds)),
        ("ViT-B/32 size: preprocessing (512² → 224² crop, normalise)", *timed_ms(lambda: base.pixels([image]),
                                                                                  rounds=args.rounds)),
        (f"ViT-B/32 size ({params_m:.0f} M parameters): score, 512² image", *timed_ms(
            lambda: base.score(image, prompt), rounds=args.rounds)),
    ]
    eight = timed_ms(lambda: base.scores(batch, [prompt] * 8), rounds=max(3, args.rounds // 4))
    rows.append(("ViT-B/32 size: 8 images in one call ÷ 8", *(v / 8 for v in eight)))
    rows.append(("sharpness (variance of the Laplacian), 512²", *timed_ms(lambda: sharpness(image), rounds=args.rounds)))
    rows.append(("pHash distance to the input, 512²", *timed_ms(lambda: phash_distance(image, other),
                                                                 rounds=args.rounds)))
    elapsed = time.perf_counter() - started

    table = timing_table(("what, per image", "median ms", "range ms"), rows, align="lrr")
    block = "\n".join([
        "## CLIPScore and the cheap quality signals per image on the CPU (`bench/enhance_audit.py`, section clipscore)",
        "",
        provenance(args, threads=f"{args.threads} torch thread(s)", load_start=load_start, elapsed=elapsed)
        + f" (the 8-image call: {max(3, args.rounds // 4)}).",
        "",
        "`workers/clip_score.py` as audit runs it (fp32, `torch.inference_mode`): the image resized and centre-"
        "cropped in torch, the prompt tokenized (77 tokens at most), both towers, the cosine. The ViT-B/32-size "
        "model is `CLIPModel(CLIPConfig())` with random weights — openai/clip-vit-base-patch32's shapes, so its "
        "cost, not its scores.",
        "",
        table,
        "",
        f"Reading: a real ViT-B/32 CLIPScore costs about {rows[2][1]:.0f} ms per image on {args.threads} CPU "
        "thread(s), several times the NSFW classifier's ~50 ms: on a CPU-only deployment it is the costliest part "
        "of audit, which is why it runs only when PIXELMILL_CLIP_MODEL is set. "
        + (f"Eight images in one call cost {rows[3][1]:.0f} ms each"
           + (" — less than alone." if rows[3][1] < rows[2][1] else " — no cheaper than alone on this machine, so "
              "audit scores each job alone.")) +
        f" Sharpness ({rows[4][1]:.1f} ms) and the pHash distance ({rows[5][1]:.1f} ms) are why every job gets the "
        "cheap signals.",
    ])
    return Section(name="clipscore", table=table, block=block)


SECTIONS: dict[str, Callable[[argparse.Namespace], Section]] = {"faces": measure_faces, "clipscore": measure_clipscore}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: stable figures on a shared "
                                                              "2-core machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for name, measure in SECTIONS.items():
        if args.section not in (name, "all"):
            continue
        section = measure(args)
        print(f"\n{section.name}\n{section.table}\n{machine()}")
        if not args.no_write:
            write_section(section.name, section.block, path=args.out)
            print(f"written to {args.out} (section {section.name})")


if __name__ == "__main__":
    main()
