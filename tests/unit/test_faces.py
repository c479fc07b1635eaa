"""Face restoration (workers/faces.py) on the tiny face models: alignment to the FFHQ template and
paste-back on a known face (the face's region changes, pixels away from it do not), weight 0 keeps
the image, the restorer session runs and is loaded once, the tiny YuNet runs through OpenCV's
FaceDetectorYN; the library tells restorers from detectors, and face_restore is refused at submit
with the setting it lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.jobs import JobParams
from tasks.models import ModelRefused, check_params, resolve_faces
from tasks.settings import Settings
from workers.errors import ModelLoadError
from workers.faces import (FFHQ_512, Face, FaceReport, align, load_detector, load_restorer, onnx_providers,
                           YuNetDetector, paste_back, restore_faces)
from workers.library import Library
from workers.onnx_header import OnnxError, read_signature
from workers.tiny_faces import TINY_FACE_PX, build_tiny_restorer, build_tiny_yunet, draw_tiny_face


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_restorer(root / "face" / "tiny-restorer.onnx")
    build_tiny_yunet(root / "face" / "tiny-yunet.onnx")
    return root


@pytest.fixture(scope="module")
def restorer(face_dir: Path):
    return load_restorer(str(face_dir / "face" / "tiny-restorer.onnx"))


class KnownFaces:
    """The detector seam: the faces a test placed."""

    def __init__(self, *faces: Face) -> None:
        self.faces = list(faces)

    def detect(self, image: np.ndarray) -> list[Face]:
        return self.faces


def _face_at(x: float, y: float, side: float) -> Face:
    """A face whose landmarks sit where the FFHQ template puts them in a ``side``-px box at (x, y)."""
    return Face(box=(x, y, side, side), landmarks5=FFHQ_512 / 512 * side + (x, y), score=0.99)


def _photo(height: int = 384, width: int = 512) -> np.ndarray:
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 0.3, ys * 0.4, (xs + ys) * 0.15], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(base + 40, 0, 255).astype(np.uint8)


# --- align and paste back --------------------------------------------------------------------------

def test_align_maps_the_landmarks_onto_the_template() -> None:
    face = _face_at(100, 60, 128)
    crop, affine = align(_photo(), face.landmarks5)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    mapped = face.landmarks5 @ affine[:, :2].T + affine[:, 2]
    assert np.abs(mapped - FFHQ_512).max() < 0.5


def test_paste_back_changes_the_face_and_nothing_far_from_it() -> None:
    image = _photo()
    face = _face_at(200, 120, 96)
    crop, affine = align(image, face.landmarks5)
    pasted = paste_back(image, np.full_like(crop, 255), affine)  # a white "restored" face: easy to see
    changed = np.abs(pasted.astype(int) - image).sum(axis=2) > 0
    x, y, side = 200, 120, 96
    assert changed[y + 30:y + 60, x + 30:x + 60].all()  # the face's middle is replaced
    assert (pasted[y + 30:y + 60, x + 30:x + 60] == 255).all()
    far = np.ones_like(changed)
    far[y - side:y + 2 * side, x - side:x + 2 * side] = False  # a face's width around the box
    assert not changed[far].any()
    # the edge is feathered: between the fully replaced middle and the untouched outside
    ring = pasted[y + 48, x - 20:x + 48, 0].astype(int)
    assert len(set(ring.tolist())) > 5


def test_an_unchanged_face_pasted_back_is_about_the_input() -> None:
    image = _photo()
    crop, affine = align(image, _face_at(160, 100, 128).landmarks5)
    pasted = paste_back(image, crop, affine)
    assert np.abs(pasted.astype(int) - image).mean() < 0.5  # resampled twice, barely
    assert np.abs(pasted.astype(int) - image)[100:228, 160:288].mean() < 6


def test_a_face_at_the_edge_of_the_image_is_pasted_inside_it() -> None:
    image = _photo()
    crop, affine = align(image, _face_at(-30, -20, 96).landmarks5)
    pasted = paste_back(image, np.zeros_like(crop), affine)
    assert pasted.shape == image.shape and (pasted[5:40, 5:40] < image[5:40, 5:40]).all()


# --- restore_faces ---------------------------------------------------------------------------------

def test_weight_zero_returns_the_input_and_one_restores(restorer) -> None:
    image = _photo()
    detector = KnownFaces(_face_at(200, 120, 96))
    kept, report = restore_faces(image, detector=detector, restorer=restorer, weight=0.0)
    assert np.array_equal(kept, image) and report == FaceReport(found=1, restored=0)
    full, report = restore_faces(image, detector=detector, restorer=restorer, weight=1.0)
    half, _ = restore_faces(image, detector=detector, restorer=restorer, weight=0.5)
    assert report == FaceReport(found=1, restored=1)
    moved_full = np.abs(full.astype(int) - image)[140:200, 220:280].mean()
    moved_half = np.abs(half.astype(int) - image)[140:200, 220:280].mean()
    assert moved_full > 1 and 0.2 * moved_full < moved_half < 0.8 * moved_full
    assert np.array_equal(full[:, :150], image[:, :150])


def test_small_faces_are_counted_not_restored_and_the_largest_go_first(restorer) -> None:
    faces = [_face_at(20, 20, 10), _face_at(300, 200, 64), _face_at(60, 100, 120)]
    _, report = restore_faces(_photo(), detector=KnownFaces(*faces), restorer=restorer, weight=1.0)
    assert report == FaceReport(found=3, restored=2)
    _, report = restore_faces(_photo(), detector=KnownFaces(*faces), restorer=restorer, weight=1.0, max_faces=1)
    assert report == FaceReport(found=3, restored=1)
    _, report = restore_faces(_photo(), detector=KnownFaces(), restorer=restorer, weight=1.0)
    assert report == FaceReport(found=0, restored=0)


def test_the_restorer_session_runs_and_is_loaded_once(face_dir: Path, restorer) -> None:
    face = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    out = restorer.restore(face)
    assert out.shape == face.shape and out.dtype == np.uint8
    assert 0 < np.abs(out.astype(int) - face).mean() < 40  # changed, but a restorer's change
    assert restorer.size == 512 and restorer.providers == ["CPUExecutionProvider"]
    assert load_restorer(str(face_dir / "face" / "tiny-restorer.onnx")) is restorer
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="does not load"):
        load_restorer(str(face_dir / "face" / "missing.onnx"))


# --- the tiny YuNet through cv2.FaceDetectorYN -------------------------------------------------------

def test_the_tiny_detector_finds_the_faces_drawn_for_it(face_dir: Path) -> None:
    detector = load_detector(str(face_dir / "face" / "tiny-yunet.onnx"))
    image = np.full((384, 512, 3), 128, np.uint8)
    assert detector.detect(image) == []
    box = draw_tiny_face(image, x=64, y=96)
    draw_tiny_face(image, x=320, y=224)
    faces = detector.detect(image)
    assert len(faces) == 2 and {f.box for f in faces} == {box, (320.0, 224.0, 96.0, 96.0)}
    face = next(f for f in faces if f.box == box)
    assert np.abs(face.landmarks5 - (FFHQ_512 / 512 * TINY_FACE_PX + (64, 96))).max() < 1
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # searched downscaled, reported in its own pixels
    found = YuNetDetector(face_dir / "face" / "tiny-yunet.onnx", max_side=512).detect(big)
    assert {f.box for f in found} == {(128.0, 192.0, 192.0, 192.0), (640.0, 448.0, 192.0, 192.0)}
    with pytest.raises(ValueError, match="multiples of 32"):
        draw_tiny_face(image, x=10, y=96)


def test_restoring_a_tiny_face_end_to_end(face_dir: Path, restorer) -> None:
    image = np.full((384, 512, 3), 128, np.uint8)
    draw_tiny_face(image, x=192, y=128)
    detector = load_detector(str(face_dir / "face" / "tiny-yunet.onnx"))
    out, report = restore_faces(image, detector=detector, restorer=restorer, weight=0.8)
    assert report == FaceReport(found=1, restored=1)
    changed = np.argwhere(np.abs(out.astype(int) - image).sum(axis=2) > 0)
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert 160 <= x0 and x1 < 320 and 96 <= y0 and y1 < 256  # within a face's width of the box


# --- the library and the submit-time checks ------------------------------------------------------------

def test_the_library_tells_restorers_from_detectors(face_dir: Path, tmp_path: Path) -> None:
    signature = read_signature(face_dir / "face" / "tiny-restorer.onnx")
    assert [(t.name, t.dtype, t.shape) for t in signature.inputs] == [("input", "float32", (1, 3, 512, 512))]
    assert "kps_32" in read_signature(face_dir / "face" / "tiny-yunet.onnx").output_names()
    with pytest.raises(OnnxError):
        read_signature(face_dir / "face" / "missing.onnx")

    root = tmp_path / "lib"
    (root / "face").mkdir(parents=True)
    for name in ("tiny-restorer.onnx", "tiny-yunet.onnx"):
        (root / "face" / name).write_bytes((face_dir / "face" / name).read_bytes())
    (root / "face" / "GFPGANv1.4.pth").write_bytes(b"never unpickled")
    (root / "face" / "broken.onnx").write_bytes(b"\xff\xff\xff\xff not a model")
    (root / "face" / "notes.txt").write_text("ignored")
    entries = {e.name: e for e in Library(root).entries("face")}
    assert set(entries) == {"tiny-restorer", "tiny-yunet", "GFPGANv1.4", "broken"}
    assert (entries["tiny-restorer"].role, entries["tiny-yunet"].role) == ("restorer", "detector")
    assert entries["tiny-restorer"].is_usable and entries["tiny-yunet"].format == "onnx"
    assert "export the model to ONNX" in entries["GFPGANv1.4"].problem
    assert "not an ONNX model" in entries["broken"].problem
    assert entries["tiny-yunet"].public()["role"] == "detector"


def test_the_header_cache_reads_a_file_again_once_it_changes(tmp_path: Path) -> None:
    from workers.file_cache import FileCache

    cache, reads = FileCache(2, error=OnnxError), []

    def read(path: Path, size: int) -> bytes:
        reads.append(size)
        return path.read_bytes()

    model = tmp_path / "a.onnx"
    model.write_bytes(b"one")
    assert cache.get(model, read) == cache.get(model, read) == b"one" and reads == [3]
    model.write_bytes(b"three")
    assert cache.get(model, read) == b"three" and reads == [3, 5]
    with pytest.raises(OnnxError, match="cannot read"):
        cache.get(tmp_path / "missing.onnx", read)

def test_face_restore_is_refused_at_submit_naming_the_missing_setting(face_dir: Path) -> None:
    params = JobParams(face_restore=0.5)
    with pytest.raises(ModelRefused, match="PIXELMILL_FACE_RESTORER") as refused:
        check_params(Settings(models_dir=face_dir, face_restorer="", face_detector="tiny-yunet"), params)
    assert refused.value.status == 422 and refused.value.code == "face_restore_unavailable"
    assert "'tiny-restorer'" in str(refused.value)  # the choices
    with pytest.raises(ModelRefused, match="PIXELMILL_FACE_DETECTOR"):
        check_params(Settings(models_dir=face_dir, face_restorer="tiny-restorer", face_detector=""), params)
    with pytest.raises(ModelRefused, match="is a face detector, not a restorer"):
        check_params(Settings(models_dir=face_dir, face_restorer="tiny-yunet", face_detector="tiny-yunet"), params)
    with pytest.raises(ModelRefused, match="not in the library"):
        check_params(Settings(models_dir=face_dir, face_restorer="gfpgan", face_detector="tiny-yunet"), params)
    configured = Settings(models_dir=face_dir, face_restorer="tiny-restorer", face_detector="tiny-yunet")
    assert check_params(configured, params).face_restore == 0.5
    assert resolve_faces(configured).detector.name == "tiny-yunet"
    unconfigured = Settings(models_dir=face_dir, face_restorer="", face_detector="")
    assert check_params(unconfigured, JobParams()).face_restore is None  # not asked: not checked
    for bad in (-0.1, 1.5, "much"):
        with pytest.raises(ValidationError):
            JobParams(face_restore=bad)
