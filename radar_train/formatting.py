"""Numbers in the reports' tables: fixed decimals, and no minus sign on a value that rounds to zero (a setting
equal to vanilla up to float rounding printed -0.00)."""
from __future__ import annotations


def fixed(v: float, digits: int, *, sign: bool = False, scale: float = 1.0) -> str:
    """`v * scale` with `digits` decimals ('+' before a positive value with `sign`); a value that rounds to zero
    prints as 0 ('+0.00' with `sign`)."""
    x = v * scale
    if round(x, digits) == 0:
        x = 0.0
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
