"""Adapter folders: peft-format LoRA folders with radar metadata (save, check, load, merge)."""
from .adapter import (ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS, RADAR_CONFIG, check_adapter, is_adapter_dir,
                      load_adapter, read_radar_config, save_adapter)

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "RADAR_CONFIG", "ADAPTER_FILES", "save_adapter", "load_adapter",
           "read_radar_config", "check_adapter", "is_adapter_dir"]
