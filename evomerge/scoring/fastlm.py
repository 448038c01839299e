"""``FastHFLM``: lm-eval's HFLM whose request methods run plans built once per worker.

A worker scores every candidate on the same requests; only the weights change. HFLM re-tokenizes,
re-sorts and re-pads the requests on every call and takes a log-softmax over every position of
every sequence. Here the first call with a given list of requests builds a *plan* (token ids,
batches, padded tensors, gather indices) and every later call with the same list runs the model
and reads the answers off its logits. Each method returns what HFLM's returns; the tests hold the
metrics to ``lm_eval.simple_evaluate``'s. docs/SCORING.md says what the fast paths rely on.

- Log-likelihoods (``loglikelihood``, so multiple choice too, and ``loglikelihood_rolling``'s
  windows): logits only where a continuation is scored, log-softmax and gather there. Token
  prefixes that several inputs share (a multiple-choice question before its options, a task's
  prompt template or few-shot block) are *stems*: computed once, their keys and values handed to
  every input that continues them. Causal attention makes that exact.
- ``generate_until``, greedy: prompts sorted by length, batched, one forward over the prompts, then
  one token per step with the KV cache; each row stops on the model's end-of-sequence ids, on a stop
  sequence, or at its token budget, and leaves the batch. Sampling, beams or a model whose
  generation config changes greedy decoding fall back to HFLM's own ``generate_until``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from transformers import DynamicCache

from evomerge.scoring.lmeval import require_internals

TokenRequest = tuple[Sequence[int], Sequence[int]]  # (context tokens, continuation tokens)

# Generation-config fields that leave greedy decoding as it is (sampling knobs are ignored when
# lm-eval asks for do_sample=False); any other field set on the model sends generation to HFLM.
GREEDY_NEUTRAL = {"bos_token_id", "eos_token_id", "pad_token_id", "max_new_tokens", "max_length", "do_sample",
                  "temperature", "top_p", "top_k", "transformers_version"}


class FastHFLM(HFLM):
    """HFLM with request plans memoized per list of requests (their strings name their tokens)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_internals()  # the two private methods below are HFLM's
        super().__init__(*args, **kwargs)
        self._max_length = self.max_length  # the property re-reads the model config on every request
        self._pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        self.plans: dict[tuple, Any] = {}  # by request list: built on the first call with it

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if (context, continuation) not in self._pairs:
            self._pairs[(context, continuation)] = super()._encode_pair(context, continuation)
        return self._pairs[(context, continuation)]

    def _plan(self, key: tuple, build: Callable[[], Any]) -> Any:
        if key not in self.plans:
            self.plans[key] = build()
        return self.plans[key]

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        key = ("loglikelihood", tuple(r[0] for r in requests))
        return self._plan(key, lambda: LoglikelihoodPlan(self, [(ctx, cont) for _, ctx, cont in requests])).run()

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if self.backend != "causal":
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        strings = tuple(req.args[0] for req in requests)
        return self._plan(("loglikelihood_rolling", strings), lambda: RollingPlan(self, strings)).run()

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if self.backend != "causal" or self.think_end_token is not None:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        args = [req.args for req in requests]
        key = ("generate_until", tuple((ctx, repr(kwargs)) for ctx, kwargs in args))
        return self._plan(key, lambda: GenerationPlan(self, args)).run(requests)

    def run_model(self, ids: torch.Tensor, **kwargs: Any) -> Any:
        """The model's output for ``ids``, under inference mode and HFLM's autocast setting.

        ``kv`` is this model's keyword for a KV cache (``cache`` in newer transformers); ``keep``
        asks for the logits of the last ``keep`` positions only, where the model supports it.
        """
        if "keep" in kwargs:
            keep = kwargs.pop("keep")
            if _accepts(self.model, "logits_to_keep"):
                kwargs["logits_to_keep"] = keep
        if "kv" in kwargs:
            kwargs[_kv_name(self.model)] = kwargs.pop("kv")
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                                   enabled=self.mixed_precision_dtype is not None):
            return self.model(ids, **kwargs)

    def output_kv(self, output: Any) -> Any:
        return output[_kv_name(self.model)]


@functools.cache
def _parameters(forward: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(forward).parameters)


def _accepts(model: torch.nn.Module, name: str) -> bool:
    return name in _parameters(type(model).forward)


def _kv_name(model: torch.nn.Module) -> str:
    return "cache" if _accepts(model, "cache") else "past_key_values"


# --- log-likelihoods ---------------------------------------------------------------------------


@dataclass
class _Batch:
    """One forward: inputs, and where each of its requests reads its continuation's log-probs."""

    ids: torch.Tensor  # [rows, width], right-padded
    keep: int  # logits of the last `keep` columns are computed
    rows: torch.Tensor  # per scored token: its row,
    cols: torch.Tensor  # its column among the kept ones,
    targets: torch.Tensor  # the continuation token,
    owner: torch.Tensor  # and which of `requests` it belongs to
    requests: list[int]  # indices into the plan's request list
    stems: torch.Tensor | None = None  # per row, its stem's row in the chunk's stem forward
    mask: torch.Tensor | None = None  # [rows, stem width + width]: the stem's real tokens and the row
    positions: torch.Tensor | None = None  # [rows, width]: positions after each row's own stem


@dataclass
class _Chunk:
    """Stems run once (none for rows that share no prefix), then the batches that continue them."""

    stems: torch.Tensor | None
    batches: list[_Batch]


class LoglikelihoodPlan:
    """(context, continuation) token requests as stems and batches, run per candidate.

    Each request is scored on HFLM's input, ``(context + continuation)[-(max_length + 1):][:-1]``;
    requests with the same input share one row. A row's stem may hold at most the tokens before its
    first scored position, so every scored logit comes from the second stage.
    """

    def __init__(self, lm: FastHFLM, requests: Sequence[TokenRequest]) -> None:
        self.lm, self.n_requests = lm, len(requests)
        row_of: dict[tuple[int, ...], int] = {}
        self.inputs: list[tuple[int, ...]] = []
        self.first: list[int] = []  # per row: its first scored position
        self.scored: list[tuple[int, int, Sequence[int]]] = []  # per request: (row, first position, continuation)
        for ctx, cont in requests:
            seq = tuple((list(ctx) + list(cont))[-(lm.max_length + 1):][:-1])
            if seq not in row_of:
                row_of[seq] = len(self.inputs)
                self.inputs.append(seq)
                self.first.append(len(seq))
            row = row_of[seq]
            self.first[row] = min(self.first[row], len(seq) - len(cont))
            self.scored.append((row, len(seq) - len(cont), cont))
        self.stem = stem_lengths([seq[:cap] for seq, cap in zip(self.inputs, self.first, strict=True)],
                                 [len(s) for s in self.inputs])
        self.chunks = self._chunks(lm.batch_size)

    def _chunks(self, batch_size: int) -> list[_Chunk]:
        by_row: dict[int, list[int]] = {}
        for i, (row, _, _) in enumerate(self.scored):
            by_row.setdefault(row, []).append(i)
        plain = sorted((r for r, s in enumerate(self.stem) if s == 0),
                       key=lambda r: (-len(self.inputs[r]), self.inputs[r]))
        chunks = [_Chunk(None, [self._batch(rows, by_row)]) for rows in _runs(plain, batch_size)]
        stems: dict[tuple[int, ...], list[int]] = {}
        for r, s in enumerate(self.stem):
            if s:
                stems.setdefault(self.inputs[r][:s], []).append(r)
        for group in _runs(sorted(stems, key=lambda t: (-len(t), t)), batch_size):
            slot = {r: j for j, t in enumerate(group) for r in stems[t]}
            rows = sorted(slot, key=lambda r: (-(len(self.inputs[r]) - self.stem[r]), self.inputs[r]))
            batches = [self._batch(run, by_row, slot, len(group[0])) for run in _runs(rows, batch_size)]
            chunks.append(_Chunk(_right_padded(group, self.lm.device), batches))
        return chunks

    def _batch(self, rows: Sequence[int], by_row: dict[int, list[int]], slot: dict[int, int] | None = None,
               stem_width: int = 0) -> _Batch:
        device = self.lm.device
        starts = [self.stem[r] for r in rows]
        width = max(len(self.inputs[r]) - s for r, s in zip(rows, starts, strict=True))
        keep = width - min(self.first[r] - s for r, s in zip(rows, starts, strict=True))
        tokens: list[tuple[int, int, int, int]] = []  # (row in batch, kept column, target, request in batch)
        requests: list[int] = []
        for b, (r, s) in enumerate(zip(rows, starts, strict=True)):
            for i in by_row[r]:
                _, first, cont = self.scored[i]
                tokens += [(b, first - s + k - (width - keep), t, len(requests)) for k, t in enumerate(cont)]
                requests.append(i)
        at_row, at_col, targets, owner = torch.tensor(tokens, dtype=torch.long).T.to(device)
        batch = _Batch(_right_padded([self.inputs[r][s:] for r, s in zip(rows, starts, strict=True)], device), keep,
                       at_row, at_col, targets, owner, requests)
        if slot is not None:
            batch.stems = torch.tensor([slot[r] for r in rows], device=device)
            real = torch.arange(stem_width).expand(len(rows), -1) < torch.tensor(starts)[:, None]
            batch.mask = torch.cat([real, torch.ones(len(rows), width, dtype=torch.bool)], dim=1).long().to(device)
            batch.positions = (torch.tensor(starts)[:, None] + torch.arange(width)).to(device)
        return batch

    def tokens(self) -> int:
        """Tokens one run feeds the model, padding included."""
        return sum(sum(b.ids.numel() for b in c.batches) + (0 if c.stems is None else c.stems.numel())
                   for c in self.chunks)

    def run(self) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = [(0.0, False)] * self.n_requests
        for chunk in self.chunks:
            kv = None
            if chunk.stems is not None:
                kv = [(k, v) for k, v, *_ in self.lm.output_kv(self.lm.run_model(chunk.stems, use_cache=True, keep=1))]
            for batch in chunk.batches:
                for i, answer in zip(batch.requests, self._score(batch, kv), strict=True):
                    out[i] = answer
        return out

    def _score(self, batch: _Batch, kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> Iterator[tuple[float, bool]]:
        extra: dict[str, Any] = {"use_cache": False}
        if kv is not None:
            cache = DynamicCache([(k[batch.stems], v[batch.stems]) for k, v in kv])
            extra = {"kv": cache, "attention_mask": batch.mask, "position_ids": batch.positions}
        logits = self.lm.run_model(batch.ids, keep=batch.keep, **extra).logits
        logits = logits[:, -batch.keep:]  # models without logits_to_keep return every position
        logp = F.log_softmax(logits[batch.rows, batch.cols], dim=-1, dtype=self.lm.softmax_dtype)
        # summed in at least float32: a bfloat16 running sum would round at every token (lm-eval's sum rounds once)
        token_lp = logp.gather(1, batch.targets[:, None]).squeeze(1).to(torch.promote_types(logp.dtype, torch.float32))
        misses = (logp.argmax(dim=-1) != batch.targets).long()
        n = len(batch.requests)
        sums = torch.zeros(n, dtype=token_lp.dtype, device=token_lp.device).index_add_(0, batch.owner, token_lp)
        greedy = torch.zeros(n, dtype=torch.long, device=misses.device).index_add_(0, batch.owner, misses) == 0
        return zip(sums.tolist(), greedy.tolist(), strict=True)


def _runs(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _right_padded(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids.to(device)


def stem_lengths(prefixes: Sequence[tuple[int, ...]], lengths: Sequence[int]) -> list[int]:
    """Per input, the length of the stem it shares with others (0: none), fewest tokens overall.

    ``prefixes[i]`` is what input i may share (the tokens before its first scored position) and
    ``lengths[i]`` its full length. A stem of length d shared by k inputs costs d tokens once plus
    each input's remaining tokens; the choice is exact over the prefix tree of sorted inputs: at each
    branching depth, either the whole subtree shares the stem there, or each child subtree decides.
    """
    order = sorted(range(len(prefixes)), key=prefixes.__getitem__)
    lcp = [_common(prefixes[a], prefixes[b]) for a, b in zip(order, order[1:], strict=False)]
    stem = [0] * len(prefixes)

    def solve(lo: int, hi: int) -> int:  # inputs order[lo:hi], at least two; returns their fewest tokens
        depth = min(lcp[lo:hi - 1])
        cuts = [k + 1 for k in range(lo, hi - 1) if lcp[k] == depth]
        children = sum(solve(a, b) if b - a > 1 else lengths[order[a]]
                       for a, b in zip([lo, *cuts], [*cuts, hi], strict=True))
        shared = depth + sum(lengths[order[k]] - depth for k in range(lo, hi))
        if depth and shared < children:
            for k in range(lo, hi):
                stem[order[k]] = depth
            return shared
        return children

    if len(order) > 1:
        solve(0, len(order))
    return stem


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common prefix, by bisection on slice equality (C-speed for few-shot-long prefixes)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class RollingPlan:
    """``loglikelihood_rolling``: each string's disjoint windows (lm-eval's own split), scored as one plan."""

    def __init__(self, lm: FastHFLM, strings: Sequence[str]) -> None:
        windows: list[TokenRequest] = []
        self.counts: list[int] = []
        for string in strings:
            split = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=lm.tok_encode(string), prefix_token=lm.prefix_token_id, max_seq_len=lm.max_length,
                context_len=1)]
            windows += split
            self.counts.append(len(split))
        self.windows = LoglikelihoodPlan(lm, windows)

    def run(self) -> list[float]:
        scores = iter(self.windows.run())
        return [sum(ll for ll, _ in (next(scores) for _ in range(n))) for n in self.counts]


# --- generation --------------------------------------------------------------------------------


@dataclass
class _Prompts:
    """One batch of prompts, left-padded, with the decoding settings of their request group."""

    requests: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    until: list[str]
    max_new: int
    window: int  # tokens decoded to look for a stop sequence: lm-eval's look-back, the longest stop's tokens + 2


class GenerationPlan:
    """``generate_until`` requests as batches of greedy decoding; other requests go to HFLM."""

    def __init__(self, lm: FastHFLM, args: Sequence[tuple[str, dict]]) -> None:
        self.lm, self.n = lm, len(args)
        self.fallback: list[int] = []
        self.batches: list[_Prompts] = []
        groups: dict[str, list[int]] = {}
        for i, (_, kwargs) in enumerate(args):
            groups.setdefault(repr(kwargs), []).append(i)
        eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
        config = lm.model.generation_config
        for members in groups.values():
            kwargs = normalize_gen_kwargs(args[members[0]][1], lm.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if not _greedy(kwargs, config):
                self.fallback += members
                continue
            # HFLM asks for max_length = prompt + max_gen_toks; transformers lets the model's own
            # max_new_tokens take precedence over that.
            max_new = config.max_new_tokens if config.max_new_tokens is not None else max_gen_toks
            prompts = {i: lm.tok_batch_encode([args[i][0]], left_truncate_len=lm.max_length - max_gen_toks,
                                              truncation=lm.truncation)[0][0].tolist() for i in members}
            order = sorted(members, key=lambda i: (-len(prompts[i]), args[i][0]))
            window = max(len(lm.tok_encode(s, add_special_tokens=False)) for s in until) + 2
            for chunk in _runs(order, lm.batch_size):
                ids, mask = _left_padded([prompts[i] for i in chunk], lm.tokenizer.pad_token_id or 0, lm.device)
                self.batches.append(_Prompts(list(chunk), ids, mask, until, max_new, window))
        self.eos_ids = set(_as_list(config.eos_token_id))

    def run(self, requests: Sequence[Any]) -> list[str]:
        out = [""] * self.n
        if self.fallback:
            for i, text in zip(self.fallback, HFLM.generate_until(self.lm, [requests[i] for i in self.fallback],
                                                                  disable_tqdm=True), strict=True):
                out[i] = text
        for batch in self.batches:
            for i, tokens in zip(batch.requests, self._decode(batch), strict=True):
                out[i] = postprocess_generated_text(self.lm.tok_decode(tokens), batch.until, None)
        return out

    def _decode(self, batch: _Prompts) -> list[list[int]]:
        """Greedy tokens per row; a row that is done leaves the batch and its cache rows go with it."""
        mask = batch.mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as transformers derives them from a left-padded mask
        output = self._forward(batch.ids, mask, positions)
        alive = list(range(len(batch.requests)))
        generated: list[list[int]] = [[] for _ in alive]
        while True:
            nxt = output.logits[:, -1].argmax(dim=-1)
            for r, t in zip(alive, nxt.tolist(), strict=True):
                generated[r].append(t)
            tails = self.lm.tokenizer.batch_decode([generated[r][-batch.window:] for r in alive])
            keep = [j for j, (r, tail) in enumerate(zip(alive, tails, strict=True))
                    if not self._done(generated[r], tail, batch)]
            if not keep:
                return generated
            cache = self.lm.output_kv(output)
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=nxt.device)
                alive, nxt, mask, positions = [alive[j] for j in keep], nxt[index], mask[index], positions[index]
                cache.batch_select_indices(index)
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            positions = positions[:, -1:] + 1
            output = self._forward(nxt[:, None], mask, positions, cache)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any = None) -> Any:
        step: dict[str, Any] = {"attention_mask": mask, "use_cache": True, "keep": 1}
        if cache is not None:
            step["kv"] = cache
        if _accepts(self.lm.model, "position_ids"):  # else the model counts positions itself, as under generate
            step["position_ids"] = positions
        return self.lm.run_model(ids, **step)

    def _done(self, tokens: list[int], tail: str, batch: _Prompts) -> bool:
        return tokens[-1] in self.eos_ids or len(tokens) >= batch.max_new or any(s in tail for s in batch.until)


def _greedy(kwargs: dict, config: Any) -> bool:
    """Whether HFLM would decode greedily with no logits processor: the only case the fast path runs."""
    if kwargs.pop("do_sample", None) is not False or kwargs.pop("temperature", 0.0) != 0.0 or kwargs:
        return False
    return set(config.to_diff_dict()) <= GREEDY_NEUTRAL


def _left_padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _as_list(ids: int | list[int] | None) -> list[int]:
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
