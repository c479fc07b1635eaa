"""Face restoration: find the faces (OpenCV's FaceDetectorYN with a YuNet model), align each to the
FFHQ five-point template, restore it with a GFPGAN-class ONNX model on onnxruntime, blend the
restored face with the aligned one by ``weight`` and paste it back under a feathered mask.

The models come from the library's face/ folder (README: face restoration) and are loaded once per
process and file. The detector is a seam: anything with ``detect(image) -> list[Face]`` will do.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from workers.errors import EngineError, ModelLoadError
from workers.styles import validate_rgb

# Where GFPGAN (and facexlib) put the eyes, the nose tip and the mouth corners in a 512-px face,
# image-left first — the order YuNet reports them in.
FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
FACE_SIZE = 512
MIN_FACE_PX = 16     # a smaller face is counted, not restored: there is nothing to restore at that size
MAX_FACES = 20       # the largest faces of a crowd are restored, the rest counted
_BORDER = (135, 133, 132)  # what facexlib fills outside the photo when a face is near its edge


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, width, height, in the image's pixels
    landmarks5: np.ndarray                   # (5, 2): eye, eye, nose tip, mouth corner, mouth corner
    score: float


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]:
        """The faces in an RGB image."""
        ...


@dataclass(frozen=True)
class FaceReport:
    """What restoration did to one image: recorded on the job."""

    found: int
    restored: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the models --------------------------------------------------------------------------------------

class YuNetDetector:
    """cv2.FaceDetectorYN on RGB images. YuNet finds faces of about 10 to 300 px (its model card), so an
    image larger than ``max_side`` (640, its training size) is searched downscaled."""

    def __init__(self, path: str | Path, *, score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 top_k: int = 200, max_side: int = 640) -> None:
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as e:
            raise ModelLoadError(f"the face detector {Path(path).name} does not load as a YuNet model "
                                 f"(cv2.FaceDetectorYN): {e.err or e}") from e
        self.max_side = max_side
        self._lock = threading.Lock()  # the detector keeps its input size: one image at a time

    def detect(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if scale < 1.0:
            bgr = cv2.resize(bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_AREA)
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self._net.detect(bgr)
        faces = [Face(box=tuple(float(v) / scale for v in row[:4]), landmarks5=row[4:14].reshape(5, 2) / scale,
                      score=float(row[14])) for row in (rows if rows is not None else [])]
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])


class OnnxRestorer:
    """A GFPGAN-class restorer: RGB in [-1, 1], N×3×S×S in and out (S from the model, else 512)."""

    def __init__(self, path: str | Path, *, providers: list[Any] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 — onnxruntime raises its own kinds for a bad file
            raise ModelLoadError(f"the face restorer {Path(path).name} does not load in onnxruntime: {e}") from e
        source, self._output = self.session.get_inputs()[0], self.session.get_outputs()[0].name
        if len(source.shape) != 4:
            raise ModelLoadError(f"the face restorer {Path(path).name} takes a {len(source.shape)}-d input; "
                                 "a GFPGAN-class model takes 1×3×512×512")
        self._input = source.name
        self.size = source.shape[2] if isinstance(source.shape[2], int) else FACE_SIZE
        self._dtype = np.float16 if "float16" in source.type else np.float32

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def restore(self, face: np.ndarray) -> np.ndarray:
        """An aligned S×S RGB uint8 face, restored."""
        x = (face.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None].astype(self._dtype)
        y = self.session.run([self._output], {self._input: x})[0][0].astype(np.float32)
        return np.clip((y.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def onnx_providers(device: str = "auto") -> list[Any]:
    """onnxruntime's providers for ``device`` (PIXELMILL_DEVICE): CUDA first where onnxruntime has it
    (the onnxruntime-gpu build) and the device is not the CPU, then the CPU."""
    import onnxruntime as ort

    if device != "cpu" and not device.startswith("mps") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@lru_cache(maxsize=4)
def load_restorer(path: str, *, revision: str = "", device: str = "auto", threads: int | None = None) -> OnnxRestorer:
    """The restorer at ``path``, loaded once per process (``revision``: the library's fingerprint)."""
    return OnnxRestorer(path, providers=onnx_providers(device), threads=threads)


@lru_cache(maxsize=4)
def load_detector(path: str, *, revision: str = "") -> YuNetDetector:
    """The YuNet detector at ``path``, loaded once per process."""
    return YuNetDetector(path)


# --- align, blend, paste back -------------------------------------------------------------------------

def align(image: np.ndarray, landmarks5: np.ndarray, *, size: int = FACE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The face cropped onto the FFHQ template at size×size, and the 2×3 affine (image → crop)."""
    template = FFHQ_512 * (size / FACE_SIZE)
    affine, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks5, np.float32), template, method=cv2.LMEDS)
    if affine is None:
        raise EngineError("the face's landmarks do not fit the template (no similarity transform)")
    crop = cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=_BORDER)
    return crop, affine


def blend(aligned: np.ndarray, restored: np.ndarray, weight: float) -> np.ndarray:
    """``weight`` of the restored face over the aligned input: 0 keeps the input, 1 is all restorer."""
    return cv2.addWeighted(restored, float(weight), aligned, 1.0 - float(weight), 0.0)


def paste_back(image: np.ndarray, face: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``face`` (an aligned crop) warped back into a copy of ``image`` by the inverse of ``affine``,
    under a mask feathered by the face's size; only the face's neighbourhood is computed."""
    size = face.shape[0]
    inverse = cv2.invertAffineTransform(affine)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    height, width = image.shape[:2]
    x0, y0 = (max(0, math.floor(v) - 1) for v in corners.min(axis=0))
    x1, y1 = min(width, math.ceil(corners[:, 0].max()) + 1), min(height, math.ceil(corners[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return image.copy()
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    region = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, shifted, region, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(np.ones((size, size), np.float32), shifted, region, flags=cv2.INTER_LINEAR)
    edge = max(1, int(math.sqrt(float(mask.sum()))) // 20)  # feather by a 20th of the face's side
    mask = cv2.erode(mask, np.ones((4 * edge + 1, 4 * edge + 1), np.uint8))
    mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)[..., None]
    out = image.copy()
    under = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(mask * warped + (1.0 - mask) * under, 0, 255).round().astype(np.uint8)
    return out


def restore_faces(image: np.ndarray, *, detector: Detector, restorer: OnnxRestorer, weight: float,
                  max_faces: int = MAX_FACES, min_face_px: int = MIN_FACE_PX) -> tuple[np.ndarray, FaceReport]:
    """Every face ``detector`` finds in the RGB ``image`` (the largest ``max_faces``, none under
    ``min_face_px``) restored with ``weight`` in [0, 1]; 0 leaves the image as it is."""
    validate_rgb(image)
    if not 0.0 <= weight <= 1.0:
        raise EngineError(f"face_restore must be between 0 and 1, got {weight}")
    faces = detector.detect(image)
    if weight == 0.0:
        return image.copy(), FaceReport(found=len(faces), restored=0)
    result, restored = image, 0
    for face in sorted(faces, key=lambda f: -f.box[2] * f.box[3])[:max_faces]:
        if min(face.box[2], face.box[3]) < min_face_px:
            continue
        try:
            crop, affine = align(image, face.landmarks5, size=restorer.size)
        except EngineError:
            continue
        result = paste_back(result, blend(crop, restorer.restore(crop), weight), affine)
        restored += 1
    return (result if restored else image.copy()), FaceReport(found=len(faces), restored=restored)
