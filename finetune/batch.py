"""Training batches: the explain prompt with its image, then the answer; loss only on the answer's tokens.

    encode = AnswerEncoder(mllm)                      # mllm: x2dfd.mllm.MLLM (base model + processor)
    batch = encode([{"image": pil, "question": q, "answer": "This image is fake. ..."}, ...])
    model(**batch).loss                               # batch["labels"]: -100 except the answer tokens

The prompt is exactly what ``x2dfd explain`` feeds (``MLLM.build_prompt``: the checkpoint's chat
template, assistant turn continued from "This image is"); the trained tokens are everything after that
prefix, the verdict word first, then the end-of-sequence token. So the position whose logits explain
reads P(fake) from is the position whose " fake"/" real" token the loss pushes. Labels are -100 on the
prompt, the image tokens and the padding. Every row is checked: its answer tokens must be the
tokenizer's tokens of the answer continued from the prefix and must start with the verdict token
explain reads (``MLLM.real_id`` / ``MLLM.fake_id``); a tokenizer that merges across the boundary is a
one-line error, not silently mislabelled data.
"""

from __future__ import annotations

from typing import Any

import torch

from x2dfd.prompts import ANSWER_PREFIX
from x2dfd.errors import UsageError

IGNORE = -100


class AnswerEncoder:
    """Collate function: samples with ``image`` (PIL), ``question``, ``answer`` and ``label`` -> model inputs."""

    def __init__(self, mllm):
        self.mllm = mllm
        self.processor = mllm.processor
        self.tokenizer = mllm.tokenizer
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise UsageError(f"the tokenizer of '{mllm.options.model}' has no end-of-sequence token to end answers with")
        self.verdict_ids = {0: mllm.real_id, 1: mllm.fake_id}

    def texts(self, question: str, answer: str) -> tuple[str, str]:
        """``(prompt, prompt + answer continuation + eos)``; the answer must start with the answer prefix."""
        if not answer.startswith(ANSWER_PREFIX):
            raise UsageError(f"answer {answer[:40]!r}... must start with {ANSWER_PREFIX!r}")
        prompt = self.mllm.build_prompt(question)
        return prompt, prompt + answer[len(ANSWER_PREFIX):] + self.tokenizer.eos_token

    def answer_ids(self, prompt: str, full: str, label: int) -> list[int]:
        """The tokens after the prompt in ``full`` (text tokenization, as the processor tokenizes)."""
        p = self.tokenizer(prompt).input_ids
        f = self.tokenizer(full).input_ids
        if f[: len(p)] != p:
            raise UsageError(f"the tokenizer of '{self.mllm.options.model}' tokenizes the prompt differently once the "
                             "answer follows it; the answer cannot be separated from the prompt exactly")
        ids = f[len(p):]
        if not ids or ids[0] != self.verdict_ids[label]:
            got = self.tokenizer.convert_ids_to_tokens(ids[:1])
            want = self.tokenizer.convert_ids_to_tokens([self.verdict_ids[label]])
            raise UsageError(f"the answer's first token is {got}, not the verdict token {want} explain reads; "
                             f"answers must continue '{ANSWER_PREFIX}' with ' real' or ' fake'")
        if ids[-1] != self.eos_id:
            raise UsageError("the end-of-sequence token did not survive tokenization of the answer")
        return ids

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        fulls, answers = [], []
        for s in samples:
            prompt, full = self.texts(s["question"], s["answer"])
            fulls.append(full)
            answers.append(self.answer_ids(prompt, full, int(s["label"])))
        batch = self.processor(images=[[s["image"]] for s in samples], text=fulls, padding=True, padding_side="right",
                               return_tensors="pt")
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(input_ids, IGNORE)
        for r, ids in enumerate(answers):
            end = int(mask[r].sum())
            start = end - len(ids)
            if input_ids[r, start:end].tolist() != ids or bool(mask[r, end:].any()):
                raise UsageError(f"the processor of '{self.mllm.options.model}' changed the answer tokens of a sample "
                                 "(expected them at the end of the row, right-padded)")
            labels[r, start:end] = input_ids[r, start:end]
        out = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out["labels"] = labels
        return out

