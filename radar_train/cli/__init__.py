"""Command-line entry points (radar-cache, radar-train, radar-generate, radar-eval, radar-bench, ...)."""
