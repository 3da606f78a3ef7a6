"""Exact, fast cue scoring: P(yes) for every (face image, cue) without generating a single token.

    scorer = CueScorer(mllm, bank.cues, batch_size=16)
    p_yes = scorer.score_image(face)             # np.ndarray, one P(yes) per cue, bank order
    for idx, p in scorer.iter_scores(face, [3, 7, 9]):   # batch by batch (progress, resumable caches)
        ...

The prompt of a cue is the checkpoint's chat template over [user: image + ``prompts/cue.jinja``
(instruction, then the cue's question)] with the assistant turn opened and left empty: the next
token starts the answer. P(yes) = softmax over the next-token logits of the first sub-tokens of
"Yes" and "No" as the template would start the answer (found by tokenizing the prompt followed by
each answer, so " Yes" after "ASSISTANT:" for LLaVA, "Yes" after "<|im_start|>assistant\\n" for
Qwen2-VL). Teacher-forced, one forward position, nothing parsed.

Speed: all cue prompts of an image share a token prefix (system text, image tokens, instruction;
computed as the longest common token prefix of all cue prompts). That prefix, which holds the 576
image tokens of LLaVA-1.5, is encoded and prefilled ONCE per image (``use_cache=True``). The cue
suffixes (question + the template's closing tokens, ~20 tokens) then run against its KV cache,
``batch_size`` cues per forward, in one of two layouts:

* ``packed`` (default): all suffixes of a batch in ONE row after the prefix, with a custom 4-D mask
  (each suffix sees the whole prefix and, causally, itself only) and positions restarting after the
  prefix for every suffix; logits only at each suffix's last token. No padding, and the prefix KV is
  concatenated once per forward.
* ``padded``: one right-padded row per cue against a batch-expanded view of the cache, a plain 2-D
  mask and explicit positions; each row reads its last real token. For attention implementations
  that ignore custom 4-D masks (at most 16 rows: every row copies the prefix KV).

Positions are 1-D, or Qwen2-VL's 3-D mrope positions continued from the prefill's rope deltas. The
tokens and positions a cue's last token sees are exactly those of the naive one-prompt-per-cue
input, so the scores agree to float precision (tests: < 1e-4 in fp32; measured ~1e-7).

With ``method="auto"`` (the default), the first face decides: where a layout cannot be used (the
processor's tokens do not split as expected, the cache is not a DynamicCache, the forward raises, or
the scores of two cues disagree with the full-prompt forward beyond float noise), packed falls back
to padded, and padded to the exact naive path (one full forward per cue) with a one-time warning.
Once the cached path has scored a face, later errors are raised, not taken for an unsupported model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from x2dfd.compat import cache_kwargs, output_cache
from x2dfd.prompts import render_template, template_version
from x2dfd.errors import UsageError

CUE_TEMPLATE = "cue.jinja"
ANSWERS = ("Yes", "No")
METHODS = ("auto", "packed", "padded", "naive")
PADDED_MAX_ROWS = 16


def cue_template_version() -> str:
    return template_version(CUE_TEMPLATE)


def render_cue_text(question: str) -> str:
    """The user text of a cue prompt (the image goes before it, as a content part)."""
    return render_template(CUE_TEMPLATE, question=question)


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def answer_prompt(mllm, user_text: str) -> tuple[str, int, int]:
    """``(prompt, yes_id, no_id)``: the chat-templated prompt with the assistant turn opened and empty,
    and the first sub-tokens of "Yes" / "No" as they start the answer (asserted distinct).

    The prompt string is the templated text with the answer removed; it is checked to tokenize to
    exactly the tokens the answers share, so the next token is the answer's first token.
    """
    tok = mllm.tokenizer
    with_yes = mllm.build_prompt(user_text, ANSWERS[0])
    with_no = mllm.build_prompt(user_text, ANSWERS[1])
    if not (with_yes.endswith(ANSWERS[0]) and with_no.endswith(ANSWERS[1])):
        raise UsageError(f"the chat template of '{mllm.options.model}' does not end the prompt with the assistant's "
                         "answer when continuing it; cue scoring needs an assistant turn it can continue")
    stem = with_yes[: -len(ANSWERS[0])]
    ids_yes = tok(with_yes, add_special_tokens=False).input_ids
    ids_no = tok(with_no, add_special_tokens=False).input_ids
    k = _common_prefix_len(ids_yes, ids_no)
    if k >= min(len(ids_yes), len(ids_no)):
        raise UsageError(f"the tokenizer of '{mllm.options.model}' gives 'Yes' and 'No' the same first token")
    yes_id, no_id = ids_yes[k], ids_no[k]
    for candidate in (stem, stem.rstrip(" ")):
        if tok(candidate, add_special_tokens=False).input_ids == ids_yes[:k]:
            return candidate, yes_id, no_id
    raise UsageError(f"cannot split the prompt of '{mllm.options.model}' before the answer token: the text before "
                     f"'{ANSWERS[0]}' does not tokenize to the tokens the two answers share")


@dataclass
class _Prefix:
    cache: object  # the DynamicCache of the prefix (batch 1)
    length: int  # tokens in the cache
    rope_delta: torch.Tensor | None  # Qwen2-VL-style mrope: text position = index + delta


class CueScorer:
    """Scores cues for one loaded MLLM; see the module docstring. ``calls`` counts model forwards."""

    def __init__(self, mllm, cues: Sequence, batch_size: int = 64, method: str = "auto", verify: bool = True):
        if method not in METHODS:
            raise UsageError(f"--method '{method}' is unknown. Available: {', '.join(METHODS)}.")
        if batch_size < 1:
            raise UsageError(f"--cue-batch-size must be >= 1, got {batch_size}")
        if not cues:
            raise UsageError("no cues to score")
        self.mllm = mllm
        self.cues = list(cues)
        self.batch_size = batch_size
        self.method = "packed" if method == "auto" else method  # the path in use: packed, padded or naive
        self.auto = method == "auto"  # only "auto" may fall back (packed -> padded -> naive)
        self.verify = verify and self.auto
        self.calls = 0
        self._per_row_keep = True
        self._proven = False  # the cached path has scored a face: later errors are real errors, not unsupported models
        self.fallback_reason: str | None = None
        self.max_verify_diff: float | None = None
        prompts, answer_ids = [], set()
        for cue in self.cues:
            prompt, yes_id, no_id = answer_prompt(mllm, render_cue_text(cue.question))
            prompts.append(prompt)
            answer_ids.add((yes_id, no_id))
        if len(answer_ids) != 1:
            raise UsageError(f"the answer tokens of '{mllm.options.model}' depend on the cue text; cannot score cues")
        [(self.yes_id, self.no_id)] = answer_ids
        self.prompts = prompts
        # Text-only tokenization, as the processor tokenizes (special tokens included); the image
        # placeholder is still one token here and gets expanded by the processor.
        self.token_ids = [list(ids) for ids in mllm.tokenizer(prompts).input_ids]
        shared = min(len(ids) for ids in self.token_ids) - 1  # every suffix keeps >= 1 token
        for ids in self.token_ids[1:]:
            shared = min(shared, _common_prefix_len(self.token_ids[0], ids))
        self.shared_len = shared
        self.template_version = cue_template_version()

    # ------------------------------------------------------------------------------------------ public
    def describe(self) -> dict:
        tok = self.mllm.tokenizer
        return {
            "template_version": self.template_version,
            "answer_tokens": {"yes": tok.convert_ids_to_tokens(self.yes_id), "no": tok.convert_ids_to_tokens(self.no_id)},
            "answer_token_ids": {"yes": self.yes_id, "no": self.no_id},
            "method": self.method,
            "fallback_reason": self.fallback_reason,
            "max_verify_diff": self.max_verify_diff,
            "cue_batch_size": self.batch_size,
            "shared_prefix_text_tokens": self.shared_len,
        }

    def score_image(self, image, indices: Sequence[int] | None = None) -> np.ndarray:
        """P(yes) for the cues at ``indices`` (default: all), in that order."""
        indices = list(range(len(self.cues))) if indices is None else list(indices)
        out = np.empty(len(indices), dtype=np.float64)
        pos = {c: i for i, c in enumerate(indices)}
        for idx, p in self.iter_scores(image, indices):
            out[[pos[i] for i in idx]] = p
        return out

    @torch.inference_mode()
    def iter_scores(self, image, indices: Sequence[int] | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield ``(cue indices, P(yes))`` batch by batch for one image."""
        indices = list(range(len(self.cues))) if indices is None else list(indices)
        if not indices:
            return
        if self.method == "naive":
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                yield chunk, self.score_naive(image, chunk)
            return
        # Padded batches: longest suffixes first, so a batch wastes little padding; and fewer rows, as every
        # row holds its own copy of the prefix KV (packed batches hold one).
        order = sorted(indices, key=lambda i: -len(self.token_ids[i])) if self.method == "padded" else indices
        size = min(self.batch_size, PADDED_MAX_ROWS) if self.method == "padded" else self.batch_size
        try:
            prefix = self._prefill(image)
            first = order[:size]
            p_first = self._score_batch(prefix, first)
            if self.verify:
                check = [first[0], first[-1]] if len(first) > 1 else first
                naive = self.score_naive(image, check)
                diff = float(np.max(np.abs(naive - p_first[[first.index(c) for c in check]])))
                self.max_verify_diff = diff
                if diff > self._tolerance():
                    raise _CacheMismatch(f"{self.method} cached P(yes) differs from the full-prompt forward by {diff:.2e}")
                self.verify = False
        except torch.OutOfMemoryError:
            raise
        except (_CacheMismatch, _Unsupported, RuntimeError, ValueError, TypeError, AttributeError) as err:
            if not self._can_fall_back():
                raise
            self._fall_back(err)
            yield from self.iter_scores(image, indices)
            return
        self._proven = True
        yield first, p_first
        for start in range(size, len(order), size):
            chunk = order[start : start + size]
            yield chunk, self._score_batch(prefix, chunk)

    @torch.inference_mode()
    def score_naive(self, image, indices: Sequence[int]) -> np.ndarray:
        """The exact reference: one full prompt (image included) per cue, one forward each."""
        model = self.mllm.model
        out = np.empty(len(indices), dtype=np.float64)
        for k, i in enumerate(indices):
            inputs = self.mllm.encode([image], [self.prompts[i]])
            logits = model(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1]
            self.calls += 1
            out[k] = self._p_yes(logits[None])[0]
        return out

    # ------------------------------------------------------------------------------------------ cached path
    @torch.inference_mode()
    def _prefill(self, image) -> _Prefix:
        """Encode the image with the first cue's prompt, cut it at the shared prefix, run that once."""
        model = self.mllm.model
        inputs = self.mllm.encode([image], [self.prompts[0]])
        ids = inputs.pop("input_ids")
        inputs.pop("attention_mask", None)
        text_ids = self.token_ids[0]
        tail = len(text_ids) - self.shared_len
        expanded_len = ids.shape[1] - tail
        if expanded_len <= 0 or ids[0, expanded_len:].tolist() != text_ids[self.shared_len :]:
            raise _Unsupported("the processor's tokens of a cue prompt do not end with the cue's own tokens")
        # Per-token side inputs (e.g. Qwen2-VL's mm_token_type_ids) are cut to the prefix as well.
        for key, value in list(inputs.items()):
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == ids.shape:
                inputs[key] = value[:, :expanded_len]
        inner = getattr(model, "model", None)
        if getattr(inner, "rope_deltas", None) is not None:
            inner.rope_deltas = None  # stale deltas of an earlier image must not leak into this prefill
        out = model(input_ids=ids[:, :expanded_len], attention_mask=torch.ones_like(ids[:, :expanded_len]),
                    use_cache=True, logits_to_keep=1, **inputs)
        self.calls += 1
        cache = output_cache(out)
        if cache is None or not hasattr(cache, "layers") or type(cache).__name__ != "DynamicCache":
            raise _Unsupported(f"the model returned a {type(cache).__name__} cache, not a DynamicCache")
        rope_delta = getattr(inner, "rope_deltas", None)
        return _Prefix(cache=cache, length=expanded_len, rope_delta=rope_delta)

    def _score_batch(self, prefix: _Prefix, indices: Sequence[int]) -> np.ndarray:
        return self._score_packed(prefix, indices) if self.method == "packed" else self._score_padded(prefix, indices)

    @torch.inference_mode()
    def _score_packed(self, prefix: _Prefix, indices: Sequence[int]) -> np.ndarray:
        """All suffixes of the batch in ONE row after the prefix, each attending to the prefix and, causally, to
        itself only (a custom 4-D mask), positions restarting after the prefix for each: no padding, and the
        prefix KV is concatenated once per forward instead of once per cue."""
        model = self.mllm.model
        device = self.mllm.device
        suffixes = [self.token_ids[i][self.shared_len :] for i in indices]
        lens = torch.tensor([len(x) for x in suffixes])
        total = int(lens.sum())
        segment = torch.repeat_interleave(torch.arange(len(suffixes)), lens)
        local = torch.cat([torch.arange(n) for n in lens.tolist()])
        allowed = (segment[:, None] == segment[None, :]) & (local[None, :] <= local[:, None])
        mask = torch.zeros((total, prefix.length + total), dtype=self.mllm.dtype)
        mask[:, prefix.length :].masked_fill_(~allowed, torch.finfo(self.mllm.dtype).min)
        positions = prefix.length + local
        if prefix.rope_delta is not None:  # mrope: text tokens carry the same position on all 3 axes
            position_ids = (positions + prefix.rope_delta.reshape(-1)[0].cpu()).view(1, 1, total).expand(3, 1, total)
        else:
            position_ids = positions.view(1, total)
        last = torch.cumsum(lens, 0) - 1
        out = model(
            input_ids=torch.tensor([t for x in suffixes for t in x])[None].to(device),
            attention_mask=mask[None, None].to(device),
            position_ids=position_ids.to(device),
            **cache_kwargs(model, _expand_cache(prefix.cache, 1)),
            use_cache=True,
            logits_to_keep=last.to(device),
        )
        self.calls += 1
        if tuple(out.logits.shape[:2]) != (1, len(suffixes)):
            raise _Unsupported(f"logits_to_keep returned shape {tuple(out.logits.shape)}")
        return self._p_yes(out.logits[0])

    @torch.inference_mode()
    def _score_padded(self, prefix: _Prefix, indices: Sequence[int]) -> np.ndarray:
        """One row per cue, right-padded, against a batch-expanded view of the prefix cache (plain 2-D mask)."""
        model = self.mllm.model
        device = self.mllm.device
        suffixes = [self.token_ids[i][self.shared_len :] for i in indices]
        b, s = len(suffixes), max(len(x) for x in suffixes)
        pad = self.mllm.tokenizer.pad_token_id or 0
        input_ids = torch.full((b, s), pad, dtype=torch.long)
        mask = torch.zeros((b, prefix.length + s), dtype=torch.long)
        mask[:, : prefix.length] = 1
        last = torch.empty(b, dtype=torch.long)
        for r, suffix in enumerate(suffixes):  # right padding: real tokens sit right after the prefix
            input_ids[r, : len(suffix)] = torch.tensor(suffix)
            mask[r, prefix.length : prefix.length + len(suffix)] = 1
            last[r] = len(suffix) - 1
        positions = torch.arange(prefix.length, prefix.length + s)
        if prefix.rope_delta is not None:  # mrope: text tokens carry the same position on all 3 axes
            delta = prefix.rope_delta.reshape(-1)[0].to("cpu")
            position_ids = (positions + delta).view(1, 1, s).expand(3, b, s)
        else:
            position_ids = positions.view(1, s).expand(b, s)
        # The vocabulary projection only at each row's last real token: per-row positions (B, 1) where the
        # model supports them (transformers' slice_logits_to_keep), else the union of last positions.
        keep = last[:, None] if self._per_row_keep else torch.unique(last)
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            **cache_kwargs(model, _expand_cache(prefix.cache, b)),
            use_cache=True,
            logits_to_keep=keep.to(device),
        )
        self.calls += 1
        if self._per_row_keep:
            if tuple(out.logits.shape[:2]) != (b, 1):  # a model that reads a 2-D logits_to_keep differently
                self._per_row_keep = False
                return self._score_padded(prefix, indices)
            return self._p_yes(out.logits[:, 0])
        column = torch.searchsorted(keep, last)
        logits = out.logits[torch.arange(b), column.to(out.logits.device)]
        return self._p_yes(logits)

    # ------------------------------------------------------------------------------------------ helpers
    def _p_yes(self, logits: torch.Tensor) -> np.ndarray:
        pair = torch.stack([logits[:, self.yes_id], logits[:, self.no_id]], dim=-1).detach().double()
        return torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()

    def _tolerance(self) -> float:
        # fp32 agrees to ~1e-6; 16-bit and quantized models only to their rounding noise.
        return 1e-3 if self.mllm.dtype == torch.float32 and not self.mllm.options.load_in_4bit else 5e-2

    def _can_fall_back(self) -> bool:
        return self.auto and not self._proven and self.method != "naive"

    def _fall_back(self, err: Exception) -> None:
        reason = f"{self.method}: {type(err).__name__}: {err}"
        self.fallback_reason = reason if self.fallback_reason is None else f"{self.fallback_reason}; {reason}"
        self.verify = True  # the next path is checked on this face too
        if self.method == "packed":  # e.g. an attention implementation without custom 4-D masks
            self.method = "padded"
            return
        self.method = "naive"
        warnings.warn(
            f"x2dfd assess: the prefix-cached cue scorer cannot be used with '{self.mllm.options.model}' "
            f"({self.fallback_reason}); falling back to the exact one-prompt-per-cue path (same scores, slower)",
            RuntimeWarning,
            stacklevel=3,
        )


class _Unsupported(Exception):
    pass


class _CacheMismatch(Exception):
    pass


def _expand_cache(cache, batch: int):
    """A batch-``batch`` copy of a batch-1 DynamicCache whose tensors are expanded views (no copy here;
    each layer's ``update`` concatenates into fresh tensors, so the prefix cache is never modified)."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        clone = copy.copy(layer)
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            clone.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            clone.values = layer.values.expand(batch, *layer.values.shape[1:])
        new.layers.append(clone)
    return new
