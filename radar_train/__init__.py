"""radar_train: post-acceleration adaption (RADAR PAA) for VAR image generators."""
__version__ = "0.1.0"


def is_source_checkout(root) -> bool:
    """Whether the folder `root` is radar_train's own source tree (its pyproject.toml names it): the package runs
    from a checkout (an editable install), not from site-packages, whatever folder that lies in."""
    from pathlib import Path

    try:
        return 'name = "radar_train"' in (Path(root) / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False

# Packages that register model presets of their own when imported (`radar_train.models.configs.register_preset`);
# `get_preset` imports them on the first name it does not know, so the model layer imports none of them.
PRESET_PACKAGES = ("radar_train.toyworld",)
