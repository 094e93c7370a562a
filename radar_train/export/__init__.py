"""Adapter export: peft-format LoRA folders with radar metadata (save, load, merge, convert checkpoints)."""
from .adapter import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, RADAR_CONFIG, export_checkpoint, load_adapter, read_radar_config,
                      save_adapter)

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "RADAR_CONFIG", "save_adapter", "load_adapter", "read_radar_config",
           "export_checkpoint"]
