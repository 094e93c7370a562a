"""radar_train: post-acceleration adaption (RADAR PAA) for VAR image generators."""
__version__ = "0.1.0"
