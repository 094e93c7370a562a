"""StepRng: the random stream of the training step (LoRA dropout), kept apart and saved in checkpoints.

Lightning does not save or restore random states in its checkpoints. Restoring the global torch state at
resume would not be enough either: between two training steps other code draws from it (every DataLoader
iterator draws its base seed, so the start of an epoch and each validation draw once), and a resumed run
draws in other places (it creates its loaders afresh and skips the validation due at the step it resumes
at). So the training forward runs on its own stream: `with step_rng.active(device):` swaps the stream's
state into torch's generators (CPU, and the CUDA device's), and takes it back out when the block ends,
leaving the global state as it was. The stream starts as a copy of the global state at the first step
(after `seed_everything`); its state is what checkpoints hold, so a resumed run draws the same dropout
masks as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["StepRng"]


class StepRng:
    """A random stream of its own for the training step (see the module docstring)."""

    def __init__(self) -> None:
        self.state: Optional[dict[str, torch.Tensor]] = None

    @contextlib.contextmanager
    def active(self, device: torch.device) -> Iterator[None]:
        """Run the block on this stream; the global random states are left as they were."""
        cuda = device.type == "cuda"
        index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else None)
        with torch.random.fork_rng(devices=[index] if cuda else []):
            if self.state is not None:
                torch.set_rng_state(self.state["cpu"])
                if cuda and "cuda" in self.state:
                    torch.cuda.set_rng_state(self.state["cuda"], index)
            try:
                yield
            finally:
                self.state = {"cpu": torch.get_rng_state()}
                if cuda:
                    self.state["cuda"] = torch.cuda.get_rng_state(index)

    def state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        return None if self.state is None else {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: Optional[dict[str, torch.Tensor]]) -> None:
        self.state = None if state is None else {k: torch.as_tensor(v, dtype=torch.uint8).clone()
                                                 for k, v in state.items()}
