"""The model library: one folder (PIXELMILL_MODELS_DIR) of checkpoints, LoRAs, ControlNets and
auxiliary models, in the layouts users already have. Torch-free: the web app lists and validates
it at submit from config files and safetensors headers, and never loads a weight.

    <library>/
      <name>/model_index.json        a diffusers checkpoint folder (save_pretrained, a hub snapshot)
      <name>.safetensors             a single-file checkpoint (A1111 / ComfyUI); also under
                                     checkpoints/ or Stable-diffusion/
      configs/<base>/                diffusers configs without weights: what a single file of that
                                     base loads with offline (or <name>.config/ beside the file)
      loras/<name>.safetensors       a LoRA (diffusers, PEFT or kohya names); also Lora/
      controlnets/<name>/            a diffusers ControlNet folder; also controlnet/, ControlNet/
      depth/<name>/                  a transformers depth-estimation folder (Depth Anything)
      clip/<name>/                   a transformers CLIPModel folder with its tokenizer (CLIPScore)
      face/<name>.onnx               face models, ONNX: GFPGAN-class restorers and the YuNet detector, told
                                     apart by their outputs (workers/onnx_header.py)

Weights are read from .safetensors only: a folder or file that holds only pickle weights (.bin,
.ckpt, .pt) is listed with the reason it cannot be used, and refused at submit.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.onnx_header import OnnxError, read_signature
from workers.safetensors_header import Header, HeaderError, read_header

KINDS = ("checkpoint", "lora", "controlnet", "depth", "clip", "face")
FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("", "checkpoints", "Stable-diffusion"),  # "" is the library's top level
    "lora": ("loras", "Lora", "lora"),
    "controlnet": ("controlnets", "controlnet", "ControlNet"),
    "depth": ("depth",),
    "clip": ("clip",),
    "face": ("face",),
}
CONFIGS = "configs"
RESERVED_KINDS: tuple[str, ...] = ()
CONTROL_TYPES = ("canny", "tile", "depth")
BASES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # by the UNet's cross-attention width
BASE_HUB_CONFIGS = {"sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                    "sd2": "stabilityai/stable-diffusion-2-1"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline",
                "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionInpaintPipeline")
DEPTH_TYPES = ("depth_anything", "dpt")
SKIP = re.compile(r"^[._]")  # hidden files and partial downloads (.partial-…)
_SINGLE_UNET = "model.diffusion_model."
_CLIP_LAYER = re.compile(r"cond_stage_model\.transformer\.text_model\.encoder\.layers\.(\d+)\.")
_DOWN = r"(?:lora\.down|lora_linear_layer\.down|lora_A|lora_down)"
_UP = r"(?:lora\.up|lora_linear_layer\.up|lora_B|lora_up)"
_ATTN2_TO_K = re.compile(rf"attn2[._]to_k[._]{_DOWN}(?:\.[^.]+)?\.weight$")
_TE_PREFIXES = ("text_encoder.", "lora_te_", "lora_te1_", "te_", "te1_")
_SDXL_LORA = ("lora_te2_", "text_encoder_2.", "te2_")
_LORA_MODULE = re.compile(rf"^(?:unet\.)?(.+?)\.{_DOWN}(?:\.[^.]+)?\.weight$")
_LORA_UP = re.compile(rf"^(?:unet\.)?(.+?)\.{_UP}(?:\.[^.]+)?\.weight$")


def base_of(cross_attention_dim: int | None) -> str | None:
    """The base architecture a cross-attention width means: sd1 (768), sd2 (1024), sdxl (2048), else ca<N>."""
    if cross_attention_dim is None:
        return None
    return BASES.get(cross_attention_dim, f"ca{cross_attention_dim}")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the library, as far as its files tell without loading it."""

    name: str
    kind: str                                # one of KINDS
    path: Path
    format: str                              # diffusers | single_file | lora | transformers | onnx | reserved
    size_bytes: int
    base: str | None = None                  # sd1 | sd2 | sdxl | ca<N>: by the cross-attention width
    cross_attention_dim: int | None = None
    fingerprint: str = ""                    # changes when its files change: the cache keys' revision
    config: Path | None = None               # a single-file checkpoint's diffusers configs
    control_type: str | None = None          # a ControlNet's canny | tile | depth, from its name
    text_encoder: bool = False               # a LoRA that also adapts the text encoder
    text_layers: int | None = None           # a checkpoint's CLIP layers (clip_skip stays below)
    role: str | None = None                  # a face model's restorer | detector
    problem: str | None = None               # why it cannot be used; None when it can
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_usable(self) -> bool:
        return self.problem is None

    def public(self) -> dict[str, Any]:
        """What GET /api/v1/models and `pixelmill models list` show."""
        return {"name": self.name, "kind": self.kind, "format": self.format, "base": self.base,
                "size_bytes": self.size_bytes, "control_type": self.control_type,
                "text_encoder": self.text_encoder if self.kind == "lora" else None, "role": self.role,
                "usable": self.is_usable, "problem": self.problem}


class Library:
    """The library at ``root`` (need not exist: then it is empty). Re-read on each call — a model
    copied in is seen at once; headers are cached by file size and mtime."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- listing ---------------------------------------------------------------------------------
    def entries(self, kind: str | None = None) -> list[ModelEntry]:
        kinds = KINDS if kind is None else (kind,)
        found: list[ModelEntry] = []
        for each in kinds:
            seen: set[str] = set()
            for entry in self._scan(each):
                if entry.name in seen:
                    entry = _with_problem(entry, f"another {each} is already named {entry.name!r}; rename one")
                    entry = ModelEntry(**{**entry.__dict__, "name": f"{entry.name} ({entry.path.name})"})
                seen.add(entry.name)
                found.append(entry)
        return sorted(found, key=lambda e: (KINDS.index(e.kind), e.name))

    def find(self, name: str, *, kind: str) -> ModelEntry | None:
        return next((e for e in self.entries(kind) if e.name == name), None)

    def names(self, kind: str) -> list[str]:
        """The usable models of ``kind``, by name."""
        return [e.name for e in self.entries(kind) if e.is_usable]

    def entry_at(self, path: str | Path) -> ModelEntry | None:
        """The checkpoint entry whose files are at ``path`` (a default model given as a path)."""
        try:
            target = Path(path).resolve()
        except OSError:
            return None
        return next((e for e in self.entries("checkpoint") if e.path.resolve() == target), None)

    # --- compatibility ------------------------------------------------------------------------------
    def lora_conflict(self, lora: ModelEntry, checkpoint: ModelEntry) -> str | None:
        """Why ``lora`` cannot apply to ``checkpoint`` (another base, other layer shapes); else None."""
        if lora.base == "sdxl" and checkpoint.base != "sdxl":
            return (f"LoRA {lora.name!r} was made for SDXL; {checkpoint.name!r} is {checkpoint.base}: "
                    "pick a LoRA made for that base")
        if lora.cross_attention_dim and checkpoint.cross_attention_dim \
                and lora.cross_attention_dim != checkpoint.cross_attention_dim:
            return (f"LoRA {lora.name!r} was made for a {lora.base} model (cross-attention width "
                    f"{lora.cross_attention_dim}); {checkpoint.name!r} is {checkpoint.base} (width "
                    f"{checkpoint.cross_attention_dim}): pick a LoRA made for that base")
        return self._shape_conflict(lora, checkpoint)

    @staticmethod
    def controlnet_conflict(controlnet: ModelEntry, checkpoint: ModelEntry) -> str | None:
        if controlnet.cross_attention_dim and checkpoint.cross_attention_dim \
                and controlnet.cross_attention_dim != checkpoint.cross_attention_dim:
            return (f"ControlNet {controlnet.name!r} was made for a {controlnet.base} model; "
                    f"{checkpoint.name!r} is {checkpoint.base}")
        return None

    def controlnet_for(self, control_type: str, *, checkpoint: ModelEntry,
                       mapping: dict[str, str] | None = None) -> ModelEntry | str:
        """The ControlNet that serves ``control_type`` for ``checkpoint``: the name ``mapping`` gives,
        else one named exactly like the type, else one whose name contains it and fits the base.
        A string says why there is none."""
        controlnets = [e for e in self.entries("controlnet")]
        wanted = (mapping or {}).get(control_type)
        if wanted:
            candidates = [e for e in controlnets if e.name == wanted]
            if not candidates:
                return (f"the ControlNet {wanted!r} that PIXELMILL_CONTROLNETS names for {control_type!r} is not "
                        f"in the library (controlnets/)")
        else:
            exact = [e for e in controlnets if e.name == control_type]
            candidates = exact or [e for e in controlnets if e.control_type == control_type]
        reasons = []
        for entry in candidates:
            reason = entry.problem or self.controlnet_conflict(entry, checkpoint)
            if reason is None:
                return entry
            reasons.append(reason)
        if reasons:
            return f"no usable ControlNet for {control_type!r}: " + "; ".join(reasons)
        have = ", ".join(e.name for e in controlnets) or "none"
        return (f"no ControlNet for {control_type!r} in the library: put one at controlnets/{control_type}/ "
                f"(a diffusers ControlNet folder) or name one in PIXELMILL_CONTROLNETS (ControlNets now: {have})")

    def _shape_conflict(self, lora: ModelEntry, checkpoint: ModelEntry) -> str | None:
        """A diffusers/PEFT-named LoRA against a diffusers checkpoint's UNet weights, layer by layer."""
        if checkpoint.format != "diffusers":
            return None
        unet_weights = _weights_in(checkpoint.path / "unet")
        if not unet_weights:
            return None
        try:
            unet = read_header(unet_weights[0]).shapes
            lora_header = read_header(_lora_file(lora.path))
        except HeaderError:
            return None
        downs, ups = {}, {}
        for key, shape in lora_header.shapes.items():
            if key.startswith(_TE_PREFIXES) or key.startswith("lora_unet_"):
                continue  # text-encoder layers, and kohya names (checked by width only)
            if (m := _LORA_MODULE.match(key)) and len(shape) >= 2:
                downs[m[1]] = shape
            elif (m := _LORA_UP.match(key)) and len(shape) >= 2:
                ups[m[1]] = shape
        for module, down in downs.items():
            weight = unet.get(f"{module}.weight") or unet.get(f"{module}.base_layer.weight")
            if weight is None:
                return (f"LoRA {lora.name!r} adapts a layer {module!r} that {checkpoint.name!r} does not have: "
                        "it was made for another base")
            up = ups.get(module)
            if down[1] != weight[1] or (up is not None and up[0] != weight[0]):
                return (f"LoRA {lora.name!r} does not fit {checkpoint.name!r}: layer {module!r} is "
                        f"{weight[1]}→{weight[0]} there, {down[1]}→{up[0] if up else '?'} in the LoRA "
                        "(made for another base)")
        return None

    # --- scanning ---------------------------------------------------------------------------------
    def _scan(self, kind: str) -> list[ModelEntry]:
        found: list[ModelEntry] = []
        for folder in FOLDERS[kind]:
            base = self.root / folder if folder else self.root
            if not base.is_dir():
                continue
            for path in sorted(base.iterdir()):
                if SKIP.match(path.name) or (not folder and path.name in _RESERVED_TOP):
                    continue
                entry = self._inspect(kind, path)
                if entry is not None:
                    found.append(entry)
        return found

    def _inspect(self, kind: str, path: Path) -> ModelEntry | None:
        if kind == "checkpoint":
            return self.inspect_checkpoint(path, quiet=True)
        if kind == "lora":
            return inspect_lora(path)
        if kind == "controlnet":
            return inspect_controlnet(path)
        if kind == "depth":
            return inspect_depth(path)
        if kind == "clip":
            return inspect_clip(path)
        if kind == "face":
            return inspect_face(path)
        return _entry(path, kind=kind, format="reserved",
                      problem=f"{kind}/ is reserved for models a coming release uses; nothing reads it yet")

    def inspect_checkpoint(self, path: str | Path, *, quiet: bool = False) -> ModelEntry | None:
        """A checkpoint at ``path`` (a diffusers folder or a single file); None when ``quiet`` and the
        path is no checkpoint at all (a stray file in the library)."""
        target = Path(path)
        if target.is_dir():
            if target.name.endswith(".config"):
                return None  # the configs a single file beside it loads with
            if (target / "model_index.json").is_file():
                return _inspect_diffusers(target)
            if quiet:
                return None
            return _entry(target, kind="checkpoint", format="diffusers",
                          problem="not a diffusers checkpoint folder (no model_index.json)")
        if target.suffix == ".safetensors":
            return self._inspect_single_file(target, quiet=quiet)
        if target.suffix in PICKLE_SUFFIXES:
            return _entry(target, kind="checkpoint", format="single_file",
                          problem=f"{target.suffix} files are pickles, which can run code when loaded: "
                                  "convert it to .safetensors")
        return None

    def _inspect_single_file(self, path: Path, *, quiet: bool) -> ModelEntry | None:
        try:
            header = read_header(path)
        except HeaderError as e:
            return _entry(path, kind="checkpoint", format="single_file", problem=str(e))
        keys = header.keys()
        if any(k.startswith("conditioner.embedders") for k in keys):
            return _entry(path, kind="checkpoint", format="single_file", base="sdxl",
                          problem="SDXL checkpoints are not supported (this engine runs Stable Diffusion 1.x/2.x)")
        if not any(k.startswith(_SINGLE_UNET) for k in keys):
            if quiet:
                return None
            return _entry(path, kind="checkpoint", format="single_file",
                          problem="not a Stable Diffusion checkpoint (no model.diffusion_model weights): "
                                  "a LoRA goes in loras/, a ControlNet in controlnets/")
        dim = next((shape[1] for key, shape in header.shapes.items()
                    if key.startswith(_SINGLE_UNET) and key.endswith("attn2.to_k.weight") and len(shape) == 2), None)
        base = base_of(dim)
        layers = {m[1] for k in keys if (m := _CLIP_LAYER.match(k))}
        config = self._config_for(path, base)
        problem = None
        if config is None:
            hub = BASE_HUB_CONFIGS.get(base or "", "<the diffusers repo of its base model>")
            problem = (f"a single-file checkpoint loads offline with the diffusers configs of its base ({base}): "
                       f"put them at {CONFIGS}/{base}/ or {path.stem}.config/ — `pixelmill models pull {hub} "
                       "--config-only` fetches them (no weights)")
        return _entry(path, kind="checkpoint", format="single_file", base=base, cross_attention_dim=dim,
                      config=config, text_layers=len(layers) or None, problem=problem)

    def _config_for(self, path: Path, base: str | None) -> Path | None:
        for candidate in (path.with_name(f"{path.stem}.config"), self.root / CONFIGS / str(base)):
            if (candidate / "model_index.json").is_file():
                return candidate
        return None


_RESERVED_TOP = {name for kind, folders in FOLDERS.items() if kind != "checkpoint" for name in folders} | {
    CONFIGS, "checkpoints", "Stable-diffusion", "openvino"}  # openvino/: conversions the CPU backend keeps


# --- one entry of each kind ---------------------------------------------------------------------------

def _inspect_diffusers(path: Path) -> ModelEntry:
    index = read_json(path / "model_index.json") or {}
    pipeline = str(index.get("_class_name", ""))
    unet = read_json(path / "unet" / "config.json") or {}
    dim = _cross_attention_dim(unet)
    text = read_json(path / "text_encoder" / "config.json") or {}
    problem = None
    if "XL" in pipeline or unet.get("addition_embed_type") == "text_time":
        problem = "SDXL checkpoints are not supported (this engine runs Stable Diffusion 1.x/2.x)"
    elif pipeline and pipeline not in SD_PIPELINES:
        problem = f"a {pipeline} is not a Stable Diffusion 1.x/2.x checkpoint"
    else:
        for component in ("unet", "vae", "text_encoder"):
            problem = problem or _weights_problem(path / component, what=component)
    return _entry(path, kind="checkpoint", format="diffusers", base=base_of(dim), cross_attention_dim=dim,
                  text_layers=text.get("num_hidden_layers"), problem=problem)


def inspect_lora(path: Path) -> ModelEntry | None:
    if path.is_dir():
        weights = _weights_in(path)
        if not weights:
            problem = _weights_problem(path, what="LoRA")
            return _entry(path, kind="lora", format="lora", problem=problem) if problem else None
        file = _lora_file(path)
    elif path.suffix == ".safetensors":
        file = path
    elif path.suffix in PICKLE_SUFFIXES:
        return _entry(path, kind="lora", format="lora", problem=f"{path.suffix} files are pickles: convert the "
                                                                 "LoRA to .safetensors")
    else:
        return None
    try:
        header = read_header(file)
    except HeaderError as e:
        return _entry(path, kind="lora", format="lora", problem=str(e))
    shapes = header.shapes
    dim = next((shape[1] for key, shape in shapes.items() if _ATTN2_TO_K.search(key) and len(shape) == 2), None)
    text_keys = [k for k in shapes if k.startswith(_TE_PREFIXES)]
    if dim is None:  # a text-encoder-only LoRA: the text width is the cross-attention width
        dim = next((shapes[k][1] for k in text_keys if _LORA_MODULE.match(k) and len(shapes[k]) == 2), None)
    base = "sdxl" if any(k.startswith(_SDXL_LORA) for k in shapes) else base_of(dim)
    problem = None
    if not any("lora" in k.lower() for k in shapes):
        problem = "no LoRA weights in it (no lora_A/lora_B or lora_down/lora_up tensors)"
    return _entry(path, kind="lora", format="lora", base=base, cross_attention_dim=dim,
                  text_encoder=bool(text_keys), problem=problem)


def inspect_controlnet(path: Path) -> ModelEntry | None:
    control_type = _control_type(path.stem if path.is_file() else path.name)
    if path.is_file():
        if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
            return None
        return _entry(path, kind="controlnet", format="single_file", control_type=control_type,
                      problem="single-file ControlNets are not supported yet: use the diffusers folder "
                              "(config.json + diffusion_pytorch_model.safetensors), e.g. lllyasviel/"
                              "control_v11p_sd15_canny")
    config = read_json(path / "config.json")
    if config is None:
        return None
    dim = _cross_attention_dim(config)
    problem = _weights_problem(path, what="ControlNet")
    if config.get("_class_name") not in (None, "ControlNetModel"):
        problem = f"a {config.get('_class_name')} is not a ControlNetModel"
    return _entry(path, kind="controlnet", format="diffusers", base=base_of(dim), cross_attention_dim=dim,
                  control_type=control_type, problem=problem)


def inspect_depth(path: Path) -> ModelEntry | None:
    if not path.is_dir():
        return None
    config = read_json(path / "config.json")
    if config is None:
        return None
    problem = _weights_problem(path, what="depth model")
    if config.get("model_type") not in DEPTH_TYPES:
        problem = problem or (f"a {config.get('model_type')!r} model is not a depth estimator this engine runs "
                              f"({', '.join(DEPTH_TYPES)})")
    return _entry(path, kind="depth", format="transformers", problem=problem,
                  extra={"model_type": config.get("model_type")})


def inspect_clip(path: Path) -> ModelEntry | None:
    """A transformers CLIPModel folder (config, safetensors weights, a CLIP tokenizer): CLIPScore."""
    if not path.is_dir():
        return None
    config = read_json(path / "config.json")
    if config is None:
        return None
    problem = _weights_problem(path, what="CLIP")
    if config.get("model_type") != "clip":
        problem = problem or f"a {config.get('model_type')!r} model is not a CLIP model (model_type 'clip')"
    elif not ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()) \
            and not (path / "tokenizer.json").is_file():
        problem = problem or "no CLIP tokenizer in it (vocab.json and merges.txt, or tokenizer.json)"
    return _entry(path, kind="clip", format="transformers", problem=problem)


YUNET_OUTPUTS = {f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)}


def inspect_face(path: Path) -> ModelEntry | None:
    """An ONNX face model: the YuNet detector (its cls/obj/bbox/kps outputs) or a GFPGAN-class restorer
    (one image input, N×3×S×S), from the graph's signature alone."""
    if path.is_dir() or path.suffix not in (".onnx", *PICKLE_SUFFIXES):
        return None
    if path.suffix != ".onnx":
        return _entry(path, kind="face", format="onnx",
                      problem=f"{path.suffix} files are PyTorch pickles: export the model to ONNX "
                              "(README: face restoration)")
    try:
        signature = read_signature(path)
    except OnnxError as e:
        return _entry(path, kind="face", format="onnx", problem=str(e))
    if YUNET_OUTPUTS <= signature.output_names():
        return _entry(path, kind="face", format="onnx", role="detector")
    shape = signature.inputs[0].shape if len(signature.inputs) == 1 else ()
    if len(shape) == 4 and (shape[1] == 3 or not isinstance(shape[1], int)):
        return _entry(path, kind="face", format="onnx", role="restorer")
    return _entry(path, kind="face", format="onnx",
                  problem="neither a YuNet face detector (outputs cls_8 … kps_32) nor a face restorer "
                          "(one image input, N×3×512×512)")


# --- helpers ---------------------------------------------------------------------------------------

def _entry(path: Path, *, kind: str, format: str, **fields: Any) -> ModelEntry:
    name = path.stem if path.is_file() else path.name
    files = _files(path)
    return ModelEntry(name=name, kind=kind, path=path, format=format, size_bytes=sum(s for _, s, _ in files),
                      fingerprint=_fingerprint(path, files), **fields)


def _with_problem(entry: ModelEntry, problem: str) -> ModelEntry:
    return ModelEntry(**{**entry.__dict__, "problem": entry.problem or problem})


def _files(path: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime_ns) of every file of a model (itself, for a single file)."""
    if path.is_file():
        stat = path.stat()
        return [(path.name, stat.st_size, stat.st_mtime_ns)]
    out = []
    for file in sorted(path.rglob("*")):
        if file.is_file() and not SKIP.match(file.name):
            stat = file.stat()
            out.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return out


def _fingerprint(path: Path, files: list[tuple[str, int, int]]) -> str:
    return hashlib.sha256(json.dumps([path.name, files]).encode()).hexdigest()[:16]


def _weights_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and not SKIP.match(p.name))


def _weights_problem(folder: Path, *, what: str) -> str | None:
    if _weights_in(folder):
        return None
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        return (f"the {what} weights are only in pickle files ({', '.join(pickles)}), which can run code when "
                "loaded: convert them to .safetensors (or pull a snapshot that has them)")
    return f"no {what} weights (.safetensors) in {folder.name}/"


def _lora_file(path: Path) -> Path:
    if path.is_file():
        return path
    weights = _weights_in(path)
    preferred = [p for p in weights if p.name == "pytorch_lora_weights.safetensors"]
    return (preferred or weights)[0]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cross_attention_dim(config: dict[str, Any]) -> int | None:
    dim = config.get("cross_attention_dim")
    if isinstance(dim, list | tuple):
        dim = dim[0] if dim else None
    return int(dim) if isinstance(dim, int | float) else None


def _control_type(name: str) -> str | None:
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    return next((t for t in CONTROL_TYPES if t in tokens), None)


def lora_file(entry: ModelEntry) -> Path:
    """The .safetensors file of a LoRA entry (the entry itself, or the one in its folder)."""
    return _lora_file(entry.path)


__all__ = ["CONTROL_TYPES", "KINDS", "Header", "Library", "ModelEntry", "base_of", "lora_file"]
