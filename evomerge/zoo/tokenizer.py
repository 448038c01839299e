"""The zoo's character-level tokenizer: one id per character, no merges, no BOS.

lm-eval's HFLM encodes a causal LM's context and continuation without special tokens, so the
models are trained and scored on bare character ids; a BOS added anywhere would shift every
position between training and evaluation.
"""

from __future__ import annotations

import string

SPECIAL = ("<pad>", "<eos>", "<unk>")
PAD, EOS, UNK = 0, 1, 2
# Every character a prompt or an answer can hold: format names and letters (lower case), answers
# of `up` (upper case), and the separators of `<format>:<letters>=<answer>.`.
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + ":=."
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate([*SPECIAL, *CHARACTERS])}
MAX_LENGTH = 64  # longest item is 27 characters (dup of 7 letters); room for users' own prompts


def encode(text: str) -> list[int]:
    """What the saved tokenizer produces for ``text`` (tests check they agree)."""
    return [VOCAB.get(c, UNK) for c in text]


def hf_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A BPE model with no merges: it splits text into single characters, unknown ones to <unk>."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab=dict(VOCAB), merges=[], unk_token=SPECIAL[UNK]))
    backend.decoder = decoders.Fuse()  # decoding joins characters without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=SPECIAL[PAD], eos_token=SPECIAL[EOS], unk_token=SPECIAL[UNK],
        model_max_length=MAX_LENGTH,
    )
