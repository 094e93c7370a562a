"""The toy world: procedural images of 10 shape classes, and the small VQ-VAE, VAR and classifier
trained on them (`radar-toy train`) and shipped as the `toy` model preset — trained weights on which
the damage of acceleration and what PAA wins back can be seen and measured on a CPU."""
from __future__ import annotations

from radar_train.models.configs import register_preset
from radar_train.toyworld.data import CLASS_NAMES, NUM_CLASSES, ToyWorld, WorldConfig
from radar_train.toyworld.preset import TOY_PRESET, WEIGHTS_DIR

register_preset(TOY_PRESET)

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "TOY_PRESET", "ToyWorld", "WEIGHTS_DIR", "WorldConfig"]
