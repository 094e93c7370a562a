"""Inference: RadarPipeline (VAR + acceleration + decoder with an optional PAA adapter)."""
from radar_train.inference.pipeline import PipelineArgs, RadarPipeline

__all__ = ["PipelineArgs", "RadarPipeline"]
