"""Command-line entry points (radar-cache, radar-train, radar-generate, radar-eval, radar-bench, ...)."""
from jsonargparse import set_parsing_settings

# show the attribute docstrings of the config dataclasses in --help
set_parsing_settings(docstring_parse_attribute_docstrings=True)
