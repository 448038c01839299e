"""Byte sizes as people write them ("80GB", "1.5GiB", 5000000000) and as evomerge prints them."""

from __future__ import annotations

import re

from evomerge.errors import EvomergeError

# Decimal units as Hugging Face's max_shard_size ("5GB" = 5e9), binary ones with an "i".
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
DEFAULT_SHARD_SIZE = "5GB"  # largest safetensors shard of a written model: Hugging Face's save_pretrained default


def parse_size(size: int | str) -> int:
    """Bytes from an int or a human size such as ``"500MB"``, ``"2GB"`` or ``"1.5GiB"``."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.match(str(size).lower())
        if not match or match.group(2) not in _UNITS:
            raise EvomergeError(f"cannot read size {size!r}: write a number of bytes or e.g. '500MB', '2GB', '1GiB'")
        value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise EvomergeError(f"size must be positive, got {size!r}")
    return value


def format_size(n: int | float) -> str:
    """``"16.1 GB"``, ``"240.0 MB"``, ``"512 B"``: decimal units, as ``parse_size`` reads them back."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
