"""Tiny face models built in code with onnx.helper, for the tests, `make tiny-model` and the bench:

- ``build_tiny_restorer``: a GFPGAN-shaped restorer — RGB in [-1, 1], 1×3×512×512 in and out — that
  is a small residual conv net with random weights (the output is the input, slightly changed).
- ``build_tiny_yunet``: a YuNet-compatible detector that `cv2.FaceDetectorYN` loads and runs like
  the real one (input ``input``, the twelve outputs cls/obj/bbox/kps at strides 8, 16 and 32). It
  "finds a face" in every saturated red square of 96 px whose corner lies on the 32-px grid
  (``draw_tiny_face``), and reports a 96-px box with the five landmarks of the FFHQ template in it.
  Stand-in only: real photos need the real YuNet (README: face restoration).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
TINY_FACE_PX = 96  # the side of the square the tiny detector reports (3 cells of its coarsest stride)
_CELL = 32


def _save(graph: onnx.GraphProto, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pixelmill-tiny")
    model.ir_version = 8  # what onnxruntime and OpenCV's dnn both read
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
    return target


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def build_tiny_restorer(path: str | Path, *, seed: int = 0, size: int = 512, width: int = 8) -> Path:
    """y = clip(x + 0.1 · conv(relu(conv(x))), -1, 1) with random 3×3 convolutions, saved to ``path``."""
    rng = np.random.default_rng(seed)
    inits = [_const("w1", rng.normal(0, 0.3, (width, 3, 3, 3))), _const("b1", np.zeros(width)),
             _const("w2", rng.normal(0, 0.3, (3, width, 3, 3))), _const("b2", np.zeros(3)),
             _const("gain", 0.1), _const("lo", -1.0), _const("hi", 1.0)]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("Conv", ["h2", "w2", "b2"], ["h3"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["h3", "gain"], ["h4"]),
             helper.make_node("Add", ["input", "h4"], ["h5"]),
             helper.make_node("Clip", ["h5", "lo", "hi"], ["output"])]
    shape = [1, 3, size, size]
    graph = helper.make_graph(nodes, "tiny_restorer",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], inits)
    return _save(graph, path)


def build_tiny_yunet(path: str | Path, *, threshold: float = 0.75) -> Path:
    """The YuNet-compatible tiny detector (see the module's docstring), saved to ``path``."""
    cells = TINY_FACE_PX // _CELL
    nodes = [helper.make_node("Conv", ["input", "w_red"], ["red"]),  # (R - G) / 255 of a BGR blob
             helper.make_node("Relu", ["red"], ["redness"])]
    inits = [_const("w_red", np.array([0, -1, 1]).reshape(1, 3, 1, 1) / 255), _const("zero", 0.0)]
    outputs = []
    for stride in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["redness"], [f"grid{stride}"], kernel_shape=[stride, stride],
                                      strides=[stride, stride]))
        if stride == _CELL:  # score: how much of the 3×3 cells around a cell is red, sharpened
            nodes += [helper.make_node("AveragePool", ["grid32"], ["cover"], kernel_shape=[cells, cells],
                                       strides=[1, 1], pads=[cells // 2] * 4, count_include_pad=1),
                      helper.make_node("Sub", ["cover", "threshold"], ["margin"]),
                      helper.make_node("Mul", ["margin", "steep"], ["logit"]),
                      helper.make_node("Sigmoid", ["logit"], ["score32"])]
            inits += [_const("threshold", threshold), _const("steep", 40.0)]
            box = [0.5, 0.5, np.log(cells), np.log(cells)]  # centre of the cell, 3 cells wide
            landmarks = (0.5 + (FFHQ_512 / 512 - 0.5) * cells).reshape(-1)
        else:  # the finer strides find nothing
            nodes.append(helper.make_node("Mul", [f"grid{stride}", "zero"], [f"score{stride}"]))
            box, landmarks = [0.0] * 4, [0.0] * 10
        for name, channels, bias in (("cls", 1, None), ("obj", 1, None), ("bbox", 4, box), ("kps", 10, landmarks)):
            source = f"score{stride}"
            if bias is not None:  # a constant map: zero weights, the bias
                inits += [_const(f"w_{name}{stride}", np.zeros((channels, 1, 1, 1))), _const(f"b_{name}{stride}", bias)]
                nodes.append(helper.make_node("Conv", [source, f"w_{name}{stride}", f"b_{name}{stride}"],
                                              [f"{name}{stride}_map"]))
                source = f"{name}{stride}_map"
            inits.append(numpy_helper.from_array(np.array([1, -1, channels], np.int64), f"shape_{name}{stride}"))
            nodes += [helper.make_node("Transpose", [source], [f"{name}{stride}_hwc"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{name}{stride}_hwc", f"shape_{name}{stride}"],
                                       [f"{name}_{stride}"])]
            outputs.append(helper.make_tensor_value_info(f"{name}_{stride}", TensorProto.FLOAT, [1, None, channels]))
    order = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)]
    outputs.sort(key=lambda o: order.index(o.name))
    graph = helper.make_graph(nodes, "tiny_yunet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
                              outputs, inits)
    return _save(graph, path)


def draw_tiny_face(image: np.ndarray, *, x: int, y: int) -> tuple[int, int, int, int]:
    """Draw, in place on an RGB image, a face the tiny detector finds: a red 96-px square at (x, y)
    (multiples of 32) with darker eyes and mouth; returns its box (x, y, w, h)."""
    if x % _CELL or y % _CELL:
        raise ValueError(f"the tiny detector finds squares on its {_CELL}-px grid: x and y must be multiples "
                         f"of {_CELL}")
    side = TINY_FACE_PX
    image[y:y + side, x:x + side] = (240, 10, 10)
    points = (FFHQ_512 / 512 * side).astype(int)
    for px, py in points[:2]:
        image[y + py - 4:y + py + 4, x + px - 6:x + px + 6] = (120, 30, 30)  # eyes
    (lx, ly), (rx, _) = points[3], points[4]
    image[y + ly - 2:y + ly + 3, x + lx:x + rx] = (150, 20, 20)  # mouth
    return x, y, side, side
