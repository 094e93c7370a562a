"""StepRng: the random stream of the training step (LoRA dropout), kept apart and saved in checkpoints.

Lightning does not save or restore random states in its checkpoints. Restoring the global torch state at
resume would not be enough either: between two training steps other code draws from it (every DataLoader
iterator draws its base seed, so the start of an epoch and each validation draw once), and a resumed run
draws in other places (it creates its loaders afresh and skips the validation due at the step it resumes
at). So the training forward runs on its own stream: `with step_rng.active(device, rank):` seeds torch's
generators (CPU, and the CUDA device's) for this one forward and puts the global state back when the block
ends.

The seed of a forward is a hash of (base, forward count, rank): `base` is drawn once, at the first step, from
the global state (after `seed_everything`) and broadcast from rank 0 (the one whose checkpoint every rank
resumes from, so a run whose ranks were seeded differently resumes exactly too); the count is the number of
training forwards before this one (micro-batches, with gradient accumulation). Checkpoints hold the base and the
count, so a resumed run draws the same dropout masks as an uninterrupted one, and since rank 0's checkpoint is
every rank's, the rank goes into the hash instead: each DDP process draws its own masks (with one seed for
all, every rank drew the same masks on its own samples).

Checkpoints written before this scheme hold the stream's torch states (`cpu`, `cuda`); a run resumed from one
goes on with that stream, as it would have.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Optional

import torch

__all__ = ["StepRng"]


def forward_seed(base: int, count: int, rank: int) -> int:
    """The seed of the `count`-th training forward of `rank` in the stream `base` (63 bits)."""
    digest = hashlib.blake2b(f"radar-step-rng:{base}:{count}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_base() -> int:
    """A stream's base seed, drawn from the global CPU generator, which is left as it was."""
    with torch.random.fork_rng(devices=[]):
        return int(torch.randint(0, 2**62, (1,)).item())


class StepRng:
    """A random stream of its own for the training step (see the module docstring)."""

    def __init__(self) -> None:
        self.base: Optional[int] = None
        self.count = 0
        self._legacy: Optional[dict[str, torch.Tensor]] = None  # an older checkpoint's generator states

    @contextlib.contextmanager
    def active(self, device: torch.device, rank: int = 0) -> Iterator[None]:
        """Run the block on this stream's next seed; the global random states are left as they were."""
        cuda = device.type == "cuda"
        index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else None)
        with torch.random.fork_rng(devices=[index] if cuda else []):
            if self._legacy is not None:
                with self._legacy_stream(cuda, index):
                    yield
                return
            if self.base is None:
                self.base = draw_base()
            seed = forward_seed(self.base, self.count, rank)
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            try:
                yield
            finally:
                self.count += 1

    @contextlib.contextmanager
    def _legacy_stream(self, cuda: bool, index: Optional[int]) -> Iterator[None]:
        torch.set_rng_state(self._legacy["cpu"])
        if cuda and "cuda" in self._legacy:
            torch.cuda.set_rng_state(self._legacy["cuda"], index)
        try:
            yield
        finally:
            self._legacy = {"cpu": torch.get_rng_state()}
            if cuda:
                self._legacy["cuda"] = torch.cuda.get_rng_state(index)

    @property
    def started(self) -> bool:
        """Whether the stream has its base (or an older checkpoint's state): what a checkpoint would hold."""
        return self.base is not None or self._legacy is not None

    def start(self, base: int) -> None:
        """Begin the stream at `base` (rank 0's, broadcast: every rank the same base, seeded or not)."""
        if self.base is None and self._legacy is None:
            self.base = int(base)

    def state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        if self._legacy is not None:
            return {k: v.clone() for k, v in self._legacy.items()}
        if self.base is None:
            return None
        return {"base": torch.tensor(self.base, dtype=torch.int64), "count": torch.tensor(self.count, dtype=torch.int64)}

    def load_state_dict(self, state: Optional[dict[str, torch.Tensor]]) -> None:
        self.base, self.count, self._legacy = None, 0, None
        if state is None:
            return
        if "base" in state:
            self.base, self.count = int(state["base"]), int(state["count"])
        else:
            self._legacy = {k: torch.as_tensor(v, dtype=torch.uint8).clone() for k, v in state.items()}
