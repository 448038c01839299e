"""The load check: an exported folder must load and generate with transformers before export reports success.

A user of a published model first loads it with ``AutoModelForCausalLM`` and ``AutoTokenizer`` and
generates; export does the same to its own output, on the temporary folder before it is renamed into
place, so a folder that fails (missing tokenizer files, a config that does not fit the weights,
non-finite weights) is never left behind.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import EvomergeError

PROMPT = "Hello"
NEW_TOKENS = 4


def check_loads(folder: Path, *, trust_remote_code: bool = False) -> None:
    """Load ``folder`` as a causal LM with its tokenizer and generate a few tokens greedily; raise EvomergeError
    (one line) if that fails, generates nothing, or gives non-finite logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code)
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                 else tokenizer.eos_token_id, output_logits=True, return_dict_in_generate=True)
    except Exception as e:  # whatever transformers raises, the user gets one line
        raise _failed(f"{type(e).__name__}: {_one_line(e)}") from None
    if out.sequences.shape[1] <= ids.shape[1]:
        raise _failed("it generated no token")
    if not all(bool(torch.isfinite(logits).all()) for logits in out.logits):
        raise _failed("its logits are not finite (nan or inf): the merged weights are broken")


def _failed(why: str) -> EvomergeError:
    return EvomergeError(f"the exported model failed its load check (AutoModelForCausalLM, AutoTokenizer, generate): "
                         f"{why}; nothing was written")


def _one_line(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text if len(text) <= limit else text[:limit] + "…"
