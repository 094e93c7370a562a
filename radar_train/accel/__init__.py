"""Acceleration methods for VAR sampling, by name."""
from __future__ import annotations

from radar_train.accel.base import AccelMethod, AccelRun, ConfigError, RunContext, ScalePlan

ACCEL_METHODS: dict[str, type[AccelMethod]] = {"none": AccelMethod}

__all__ = ["ACCEL_METHODS", "AccelMethod", "AccelRun", "ConfigError", "RunContext", "ScalePlan"]
