"""LoRA adapters on a loaded pipeline: loaded once (``load_lora_weights``, PEFT), kept in a
least-recently-used set of ``slots`` per pipeline, and switched per call with ``set_adapters``
(or switched off, which gives exactly the plain model's output).

Adapters are named by a hash of their file's identity: PEFT refuses a reused name and names
with dots, and a LoRA replaced in the library under the same name must load afresh.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from workers.errors import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraUse:
    """A LoRA file applied with a weight (workers.library finds it; the engine loads it)."""

    name: str
    path: str
    weight: float = 1.0
    fingerprint: str = ""
    text_encoder: bool = False  # it also adapts the text encoder (so it changes prompt embeddings)

    @property
    def adapter_name(self) -> str:
        return "lora_" + hashlib.sha256(f"{self.path}|{self.fingerprint}".encode()).hexdigest()[:16]

    def key(self) -> tuple[str, str, float]:
        return (self.name, self.fingerprint, self.weight)


class LoraSlots:
    """The adapters loaded on one pipeline; not thread-safe (the engine holds its lock)."""

    def __init__(self, pipe, *, slots: int = 8) -> None:
        if slots < 1:
            raise EngineError(f"lora slots must be at least 1, got {slots}")
        self._pipe = pipe
        self.slots = slots
        self._loaded: OrderedDict[str, LoraUse] = OrderedDict()
        self._active: tuple[tuple[str, float], ...] = ()
        self.loads = 0  # how many times a file was read (the rest were cached): tests and bench read it

    @property
    def loaded(self) -> list[str]:
        return [use.name for use in self._loaded.values()]

    def activate(self, loras: tuple[LoraUse, ...]) -> None:
        """Make exactly ``loras`` (with their weights) active; none: the plain model."""
        wanted = tuple((use.adapter_name, use.weight) for use in loras)
        if len(wanted) > self.slots:
            raise EngineError(f"{len(wanted)} LoRAs at once is more than PIXELMILL_LORA_SLOTS ({self.slots})")
        for use in loras:
            self._ensure(use, keep={name for name, _ in wanted})
        if wanted == self._active:
            return
        if not wanted:
            self._pipe.disable_lora()
        else:
            self._pipe.enable_lora()
            self._pipe.set_adapters([name for name, _ in wanted], adapter_weights=[w for _, w in wanted])
        self._active = wanted

    def _ensure(self, use: LoraUse, *, keep: set[str]) -> None:
        name = use.adapter_name
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        while len(self._loaded) >= self.slots:
            victim = next(n for n in self._loaded if n not in keep)
            self._pipe.delete_adapters([victim])
            log.info("LoRA %s unloaded (least recently used of %d)", self._loaded.pop(victim).name, self.slots)
            self._active = ()  # set_adapters again: the active set may have named it
        try:
            with _quiet_transformers():  # it reports every adapter weight as "missing" before it fills them in
                self._pipe.load_lora_weights(use.path, adapter_name=name)
        except Exception as e:  # a file that does not fit this model (another base), or is corrupt
            self._forget(name)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(f"LoRA {use.name!r} could not be loaded on this model: {reason}") from e
        self._loaded[name] = use
        self._active = ()
        self.loads += 1

    def _forget(self, name: str) -> None:
        """Remove whatever a failed load left behind, so the name can be loaded again."""
        try:
            adapters = self._pipe.get_list_adapters()
            if any(name in names for names in adapters.values()):
                self._pipe.delete_adapters([name])
        except Exception:  # noqa: BLE001 — nothing was left
            pass




@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)
