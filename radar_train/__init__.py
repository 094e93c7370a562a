"""radar_train: post-acceleration adaption (RADAR PAA) for VAR image generators."""
__version__ = "0.1.0"

# Packages that register model presets of their own when imported (`radar_train.models.configs.register_preset`);
# `get_preset` imports them on the first name it does not know, so the model layer imports none of them.
PRESET_PACKAGES = ("radar_train.toyworld",)
