"""Write tensors as a Hugging Face model folder that ``from_pretrained`` and ``SourcePool`` read back.

The layout is exactly what ``save_pretrained`` writes: ``model.safetensors`` when everything fits
one shard, else ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``; shards
can be made one at a time (``write_model_shards``), so only one shard is ever in memory. config.json
comes from a template folder (the base), tokenizer files, chat template and generation config from
the tokenizer folder (the base, or a chosen source).
The folder is built beside ``out`` and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from safetensors.torch import save_file
from torch import Tensor

from evomerge.config.sizes import DEFAULT_SHARD_SIZE, parse_size
from evomerge.errors import EvomergeError
from evomerge.files import replace_folder
from evomerge.sources.folder import SAFETENSORS_FILE, SAFETENSORS_INDEX

PACKAGE = Path(__file__).resolve().parents[1]  # the evomerge package: never an output

MODEL_FILES = ("config.json",)  # from the template (the base)
# Everything else a usable model folder needs, when the tokenizer folder has it (the template unless
# a tokenizer source is chosen: an instruct fine-tune's chat template, eos and generation settings).
TOKENIZER_FILES = (
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
TEMPLATE_FILES = MODEL_FILES + TOKENIZER_FILES
SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")  # config.json's, taken with the tokenizer

# (name, entries, bytes) of a tensor to write: what sharding needs before any tensor exists
Sizes = Sequence[tuple[str, int, int]]


def write_model_folder(tensors: Mapping[str, Tensor], out: Path, *, template: Path,
                       shard_size: int | str = DEFAULT_SHARD_SIZE,
                       force: bool = False, extra_files: Mapping[str, str | bytes] = {}, tokenizer: Path | None = None,
                       dtype: str | None = None, check: Callable[[Path], None] | None = None) -> Path:
    """Write ``tensors`` (in their given order) and the template's config/tokenizer files to ``out``.

    ``extra_files`` (name -> content, e.g. a model card) are written last, so they may replace a
    template file. An existing non-empty ``out`` is replaced only with ``force``. ``tokenizer``: the
    folder of the tokenizer files (default: the template); ``dtype``: written into config.json.
    ``check`` runs on the finished folder before it is renamed to ``out``; if it raises, nothing is written.
    """
    sizes = [(n, t.numel(), t.numel() * t.element_size()) for n, t in tensors.items()]
    return write_model_shards(sizes, lambda names: {n: tensors[n] for n in names}, out, template=template,
                              shard_size=shard_size, force=force, extra_files=extra_files, tokenizer=tokenizer,
                              dtype=dtype, check=check)


def write_model_shards(sizes: Sizes, make_shard: Callable[[list[str]], Mapping[str, Tensor]], out: Path, *,
                       template: Path, shard_size: int | str = DEFAULT_SHARD_SIZE, force: bool = False,
                       extra_files: Mapping[str, str | bytes] = {}, tokenizer: Path | None = None,
                       dtype: str | None = None, check: Callable[[Path], None] | None = None,
                       config: Mapping[str, Any] = {}) -> Path:
    """As ``write_model_folder``, one shard at a time: ``make_shard(names)`` returns that shard's tensors, which are
    written and dropped before the next shard is made (a model larger than memory can be written). ``config``: keys that
    replace the template's in config.json (a layer stack's layer count)."""
    out, template = Path(out), Path(template)
    max_bytes = parse_size(shard_size)
    if not sizes:
        raise EvomergeError("no tensors to write")
    if not (template / "config.json").is_file():
        raise EvomergeError(f"template folder {template} has no config.json: use the base model's folder as template")
    check_output_folder(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_shards(sizes, make_shard, tmp, max_bytes)
        _copy_template(template, Path(tokenizer) if tokenizer is not None else template, tmp, dtype, config)
        for name, content in extra_files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        if check is not None:
            check(tmp)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def shard_names(sizes: Sizes, max_bytes: int) -> list[list[str]]:
    """Greedy sharding in the given order, as ``save_pretrained`` does; one shard when all fit."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, _, size in sizes:
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _write_shards(sizes: Sizes, make_shard: Callable[[list[str]], Mapping[str, Tensor]], folder: Path,
                  max_bytes: int) -> None:
    shards = shard_names(sizes, max_bytes)
    files = [SAFETENSORS_FILE] if len(shards) == 1 else [f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                                                         for i in range(1, len(shards) + 1)]
    weight_map = {}
    for names, file in zip(shards, files, strict=True):
        tensors = make_shard(names)
        save_file({n: tensors[n].detach().cpu().contiguous() for n in names}, folder / file, metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(names, file))
    if len(shards) == 1:
        return
    index = {
        "metadata": {"total_parameters": sum(n for _, n, _ in sizes), "total_size": sum(b for _, _, b in sizes)},
        "weight_map": weight_map,
    }
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_template(template: Path, tokenizer: Path, folder: Path, dtype: str | None,
                   updates: Mapping[str, Any]) -> None:
    """config.json from the template (with the dtype, the tokenizer's special token ids and ``updates``),
    the rest from the tokenizer."""
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy2(tokenizer / name, folder / name)
    if dtype is None and tokenizer == template and not updates:
        shutil.copy2(template / "config.json", folder / "config.json")
        return
    config = json.loads((template / "config.json").read_text(encoding="utf-8"))
    if dtype is not None:
        config["dtype"] = config["torch_dtype"] = dtype  # transformers 5 reads dtype; 4.x torch_dtype
    if tokenizer != template and (tokenizer / "config.json").is_file():
        theirs = json.loads((tokenizer / "config.json").read_text(encoding="utf-8"))
        config.update({k: theirs[k] for k in SPECIAL_TOKENS if k in theirs})
    config.update(updates)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_output_folder(out: Path, force: bool) -> None:
    """Refuse a non-empty output folder unless forced; callers check early, before expensive work."""
    if _occupied(out) and not force:
        raise EvomergeError(f"{out} already exists and is not empty: choose another folder or pass --force to "
                            "overwrite it")


def check_outside(out: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse an output path that is, holds or lies inside an input (``(what, path)`` pairs) or the package itself.

    Links are resolved on both sides. Callers check before any write: ``--force`` replaces an earlier output, and
    an output that overlaps an input would replace or mix into what the command reads."""
    target = Path(out).resolve()
    for what, path in [*inputs, ("the evomerge package", PACKAGE)]:
        source = Path(path).resolve()
        if target == source:
            relation = "is"
        elif target in source.parents:
            relation = "holds"
        elif source in target.parents:
            relation = "lies inside"
        else:
            continue
        raise EvomergeError(f"output {out} {relation} {what} {path}, which this command reads; choose an output "
                            "outside every input (--force replaces an earlier output, never an input)")


def _occupied(out: Path) -> bool:
    return out.is_file() or out.is_symlink() or (out.is_dir() and any(out.iterdir()))


