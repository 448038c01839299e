"""The zoo's decoder (Llama or GPT-2, ~0.45M parameters) and a hand-rolled LoRA.

Sizes are the zoo's (docs/ZOO.md): d=96, ff=256, 4 layers, 4 heads, tied embeddings.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from evomerge.errors import EvomergeError
from evomerge.zoo.skills import TERMINATOR
from evomerge.zoo.tokenizer import EOS, MAX_LENGTH, PAD, VOCAB

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DIM, FF, LAYERS, HEADS = 96, 256, 4, 4
# LoRA targets: every projection of attention and MLP (GPT-2's c_proj names both outputs).
LORA_TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def check_arch(arch: str) -> None:
    if arch not in LORA_TARGETS:
        raise EvomergeError(f"unknown zoo arch '{arch}': choose one of {', '.join(LORA_TARGETS)}")


def new_model(arch: str, seed: int) -> PreTrainedModel:
    """A freshly initialized decoder; its init draws from torch's global RNG, seeded here."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    check_arch(arch)
    torch.manual_seed(seed)
    ids: dict[str, Any] = {"vocab_size": len(VOCAB), "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": None,
           "tie_word_embeddings": True}
    model: PreTrainedModel
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=DIM, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=HEADS, max_position_embeddings=MAX_LENGTH, **ids,
        ))
    else:
        # No dropout: an expert should differ from the base by what it learned, not by noise.
        model = GPT2LMHeadModel(GPT2Config(
            n_embd=DIM, n_inner=FF, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_LENGTH,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        ))
    model.generation_config = generation_config()
    return model


def generation_config():  # -> transformers.GenerationConfig
    """Greedy decoding that stops at the answer terminator (what lm-eval's `acc` checks)."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, max_new_tokens=32, pad_token_id=PAD, eos_token_id=[VOCAB[TERMINATOR], EOS])


class LoRA(nn.Module):
    """W + (α/r)·B·A as a weight parametrization, so folding it in is one library call."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, transposed: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        # GPT-2's Conv1D stores its weight as [in, out]; nn.Linear as [out, in].
        out_f, in_f = weight.shape[::-1] if transposed else weight.shape
        bound = 1 / math.sqrt(in_f)  # PEFT's init: A uniform, B zero, so training starts at the base
        self.A = nn.Parameter((torch.rand(rank, in_f, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(out_f, rank))
        self.scale = alpha / rank
        self.transposed = transposed

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.B @ self.A) * self.scale
        return weight + (delta.T if self.transposed else delta)


def add_lora(model: nn.Module, arch: str, rank: int, alpha: float, seed: int) -> list[nn.Parameter]:
    """Freeze the model and adapt every target projection; returns the trainable parameters."""
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    params = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS[arch]:
            lora = LoRA(module.weight, rank, alpha, transposed=not isinstance(module, nn.Linear), generator=generator)
            parametrize.register_parametrization(module, "weight", lora)
            params += [lora.A, lora.B]
    return params


def fold_lora(model: nn.Module) -> None:
    """Write W + BA into the plain weights and drop the adapters: an ordinary HF model again."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
