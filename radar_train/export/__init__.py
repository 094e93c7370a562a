"""Adapter folders: peft-format LoRA folders with radar metadata (save, check, load, merge), and the optional
label conditioning (per-class FiLM) beside the LoRA."""
from .adapter import (ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS, RADAR_CONFIG, adapter_version, check_adapter,
                      check_same_adapter, is_adapter_dir, load_adapter, read_radar_config, save_adapter)
from .label_conditioning import (LABEL_CONDITIONING_WEIGHTS, ClassFiLM, LabelConditionedDecoder, decode_with_labels,
                                 is_label_conditioned)

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "RADAR_CONFIG", "ADAPTER_FILES", "save_adapter", "load_adapter",
           "read_radar_config", "check_adapter", "is_adapter_dir", "adapter_version", "check_same_adapter",
           "LABEL_CONDITIONING_WEIGHTS", "ClassFiLM",
           "LabelConditionedDecoder", "decode_with_labels", "is_label_conditioned"]
