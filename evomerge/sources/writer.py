"""Write tensors as a Hugging Face model folder that ``from_pretrained`` and ``SourcePool`` read back.

The layout is exactly what ``save_pretrained`` writes: ``model.safetensors`` when everything fits
one shard, else ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``. Config,
generation config and tokenizer files come from a template folder (the base or a chosen source).
The folder is built beside ``out`` and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from safetensors.torch import save_file
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.sources.pool import SAFETENSORS_FILE, SAFETENSORS_INDEX

DEFAULT_SHARD_SIZE = 5 * 2**30

# Everything besides the weights that a usable model folder needs, when the template has it.
TEMPLATE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

# Decimal units as Hugging Face's max_shard_size ("5GB" = 5e9), binary ones with an "i".
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


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


def write_model_folder(
    tensors: Mapping[str, Tensor],
    out: Path,
    *,
    template: Path,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    force: bool = False,
    extra_files: Mapping[str, str | bytes] = {},
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``tensors`` (in their given order) and the template's config/tokenizer files to ``out``.

    ``extra_files`` (name -> content, e.g. a model card) are written last, so they may replace a
    template file. ``check`` runs on the finished folder before it is renamed to ``out``; if it
    raises, nothing is written. An existing non-empty ``out`` is replaced only with ``force``.
    """
    out, template = Path(out), Path(template)
    max_bytes = parse_size(shard_size)
    if not tensors:
        raise EvomergeError("no tensors to write")
    if not (template / "config.json").is_file():
        raise EvomergeError(f"template folder {template} has no config.json: use the base model's folder as template")
    check_output_folder(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_shards(tensors, tmp, max_bytes)
        for name in TEMPLATE_FILES:
            if (template / name).is_file():
                shutil.copy2(template / name, tmp / name)
        for name, content in extra_files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        if check is not None:
            check(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_shards(tensors: Mapping[str, Tensor], folder: Path, max_bytes: int) -> None:
    """Greedy sharding in the given order, as ``save_pretrained`` does; one file when all fit."""
    shards: list[dict[str, Tensor]] = [{}]
    used = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and used + size > max_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = tensor.detach().cpu().contiguous()
        used += size
    if len(shards) == 1:
        save_file(shards[0], folder / SAFETENSORS_FILE, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {
        "metadata": {
            "total_parameters": sum(t.numel() for t in tensors.values()),
            "total_size": sum(t.numel() * t.element_size() for t in tensors.values()),
        },
        "weight_map": weight_map,
    }
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_output_folder(out: Path, force: bool) -> None:
    """Refuse a non-empty output folder unless forced; callers check early, before expensive work."""
    if _occupied(out) and not force:
        raise EvomergeError(f"{out} already exists and is not empty: choose another folder or pass --force to overwrite it")


def _occupied(out: Path) -> bool:
    return out.is_file() or out.is_symlink() or (out.is_dir() and any(out.iterdir()))


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an old ``out`` is set aside first and restored if the move fails."""
    if not (out.exists() or out.is_symlink()):
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)) / "old"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    finally:
        shutil.rmtree(old.parent, ignore_errors=True)
