"""``x2dfd assess --generate-cues N``: a language model proposes new cues; duplicates of the bank are dropped.

    x2dfd assess --generate-cues 30 --cues-out my_cues.yaml --model llava-hf/llava-1.5-7b-hf   # the MLLM's own LM
    x2dfd assess --generate-cues 30 --cues-out my_cues.yaml --generator-model Qwen/Qwen2.5-7B-Instruct
    x2dfd assess DATA --cues my_cues.yaml ...                                                 # then rank them

The meta-prompt (``prompts/cue_generation.jinja``) shows the regions, a few bank cues as examples
and a sample of the existing questions, and asks for lines ``region | question | present | absent``.
Proposals are parsed leniently (bullets, numbering, region aliases such as "mouth/lips"), validated
like bank cues, and dropped when they duplicate a bank cue or an earlier proposal: same normalized
text, or a token-overlap (Jaccard over content-word stems) of at least 0.6. Accepted cues get new
ids ``<region>.gen_NNN`` (numbers never reused) and are appended to ``--cues-out``; that file starts
as a copy of the input bank, so it is a complete bank on its own, and existing ids are never rewritten.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from x2dfd.prompts import render_template
from x2dfd.errors import UsageError

from x2dfd.feature_assessment.cues import DEFAULT_CUES_PATH, REGIONS, Cue, _load_yaml, parse_cue_file, validate_cue

META_TEMPLATE = "cue_generation.jinja"
SIMILARITY_THRESHOLD = 0.6
_REGION_ALIASES = {
    "lips": "mouth", "mouth/lips": "mouth", "mouth and lips": "mouth", "eye": "eyes", "eyebrow": "eyebrows",
    "tooth": "teeth", "skin texture": "skin_texture", "texture": "skin_texture", "skin tone": "skin_tone",
    "skin colour": "skin_tone", "skin color": "skin_tone", "face boundary": "boundary", "blending": "boundary",
    "face boundary/blending": "boundary", "boundary/blending": "boundary", "lighting/shadows": "lighting",
    "shadows": "lighting", "light": "lighting", "geometry/symmetry": "geometry", "symmetry": "geometry",
    "ear": "ears", "whole image": "global", "image": "global",
}
_STOPWORDS = frozenset(
    "a an the is are was were be do does did of in on at to for from with without by or and any either than that "
    "this these those there it its look looks looking appear appears seem seems face image photo person "
    "their his her them they as into onto over under around between while compared compare like "
    # generic comparison words: without them "two nostrils differ in shape" would match "two ears differ in shape"
    "two both each one other clearly very much too different differ differs unnatural unnaturally natural".split()
)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _stem(word: str) -> str:
    """A crude suffix stripper, applied alike to both sides ("blurred", "blurry", "blurs" -> "blur")."""
    for suffix in ("ies", "ing", "ed", "es", "s", "y"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2]:
        word = word[:-1]
    return word


def content_tokens(text: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in normalize(text).split() if w not in _STOPWORDS)


def similarity(a: str, b: str) -> float:
    """Jaccard overlap of the content-word stems of two questions (0 disjoint, 1 same words)."""
    ta, tb = content_tokens(a), content_tokens(b)
    if not ta or not tb:
        return float(normalize(a) == normalize(b))
    return len(ta & tb) / len(ta | tb)


def find_duplicate(question: str, existing: Sequence[str], threshold: float = SIMILARITY_THRESHOLD) -> str | None:
    """The first existing question ``question`` duplicates (same normalized text or overlap >= threshold)."""
    norm = normalize(question)
    for other in existing:
        if normalize(other) == norm or similarity(question, other) >= threshold:
            return other
    return None


def _region(text: str) -> str | None:
    key = " ".join(text.strip().lower().replace("_", " ").split())
    if key.replace(" ", "_") in REGIONS:
        return key.replace(" ", "_")
    return _REGION_ALIASES.get(key)


def parse_proposals(text: str) -> list[dict]:
    """Lines ``region | question | present | absent`` -> raw cue dicts (no id yet); other lines ignored."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip()
        parts = [p.strip().strip('"').strip() for p in line.split("|")]
        if len(parts) != 4 or not all(parts):
            continue
        region = _region(parts[0])
        question = parts[1]
        if region is None or not question.endswith("?"):
            continue
        present, absent = (p.rstrip(".").strip() for p in parts[2:])
        out.append({"region": region, "question": question, "present": present, "absent": absent})
    return out


@dataclass
class GenerationResult:
    accepted: list[Cue] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (question or line, reason)
    rounds: int = 0


def _next_ids(existing_ids: set[str]) -> Callable[[str], str]:
    counters: dict[str, int] = {}
    for cue_id in existing_ids:
        m = re.match(r"^([a-z0-9_]+)\.gen_(\d+)$", cue_id)
        if m:
            counters[m.group(1)] = max(counters.get(m.group(1), 0), int(m.group(2)))

    def take(region: str) -> str:
        counters[region] = counters.get(region, 0) + 1
        return f"{region}.gen_{counters[region]:03d}"

    return take


def region_descriptions() -> list[dict[str, str]]:
    regions = (_load_yaml(DEFAULT_CUES_PATH) or {}).get("regions") or {}
    return [{"name": r, "description": regions.get(r, r.replace("_", " "))} for r in REGIONS]


def build_meta_prompt(cues: Sequence[Cue], n: int, round_index: int = 0, n_avoid: int = 60) -> str:
    examples = []
    for region in REGIONS:  # one example from a few different regions
        example = next((c for c in cues if c.region == region), None)
        if example is not None and len(examples) < 5:
            examples.append(example)
    # A different sample of the existing questions each round; dedupe is done in code anyway.
    step = max(1, len(cues) // n_avoid)
    avoid = [c.question for c in cues[round_index % step :: step]][:n_avoid]
    return render_template(META_TEMPLATE, n=n, regions=region_descriptions(), examples=examples, avoid=avoid)


def generate_cues(propose: Callable[[str], str], cues: Sequence[Cue], n: int, max_rounds: int = 3,
                  origin: str = "generated") -> GenerationResult:
    """Ask ``propose(meta_prompt) -> text`` up to ``max_rounds`` times until ``n`` new, unique cues are found."""
    if n < 1:
        raise UsageError(f"--generate-cues must be >= 1, got {n}")
    result = GenerationResult()
    known = [c.question for c in cues]
    take_id = _next_ids({c.id for c in cues})
    for round_index in range(max_rounds):
        if len(result.accepted) >= n:
            break
        result.rounds += 1
        text = propose(build_meta_prompt(cues, n - len(result.accepted), round_index))
        for raw in parse_proposals(text):
            if len(result.accepted) >= n:
                break
            dup = find_duplicate(raw["question"], known)
            if dup is not None:
                result.rejected.append((raw["question"], f"duplicates: {dup}"))
                continue
            try:
                cue = validate_cue({"id": take_id(raw["region"]), **raw, "origin": origin}, "generated cue")
            except UsageError as err:
                result.rejected.append((raw["question"], str(err)))
                continue
            result.accepted.append(cue)
            known.append(cue.question)
    return result


# ------------------------------------------------------------------------------------------------ files
def _entry_yaml(cue: Cue, indent: str) -> str:
    import yaml

    text = yaml.safe_dump([cue.to_dict()], sort_keys=False, width=10_000, allow_unicode=True)
    return "".join(indent + line + "\n" for line in text.splitlines())


def write_cue_file(path: str | Path, base: Sequence[Cue], new: Sequence[Cue]) -> Path:
    """Append ``new`` cues to ``path``; create it as a copy of ``base`` first. Existing entries are kept
    byte for byte (text append), and the result is re-validated before it replaces the file."""
    path = Path(path)
    if path.is_file():
        parse_cue_file(path)  # a broken file is reported, not silently extended
        old = path.read_text(encoding="utf-8")
        top_keys = re.findall(r"^([A-Za-z_][\w-]*)\s*:", old, flags=re.M)
        if not top_keys or top_keys[-1] != "cues":
            raise UsageError(f"--cues-out '{path}': 'cues:' must be the last top-level key so new cues can be appended")
        items = re.findall(r"^(\s*)- ", old.split("\ncues:", 1)[-1], flags=re.M)
        indent = items[-1] if items else "  "
        text = old + ("" if old.endswith("\n") else "\n")
    else:
        import yaml

        regions = {r["name"]: r["description"] for r in region_descriptions()}
        text = ("# x2dfd cue bank: a copy of the input bank plus cues proposed by `x2dfd assess --generate-cues`.\n"
                "# Ids are stable: append new cues, never rename or renumber existing ones.\n"
                "version: 1\n" + yaml.safe_dump({"regions": regions}, sort_keys=False, width=10_000) + "cues:\n")
        indent = "  "
        text += "".join(_entry_yaml(c, indent) for c in base)
    text += "".join(_entry_yaml(c, indent) for c in new)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    try:
        parse_cue_file(tmp)
    except UsageError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ generators
def _sample(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    import torch

    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=temperature > 0, temperature=temperature or None, top_p=0.95,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def mllm_generator(mllm, max_new_tokens: int = 768, temperature: float = 0.8, seed: int = 0) -> Callable[[str], str]:
    """The MLLM's own language model, prompted text-only through its chat template."""
    calls = iter(range(10**9))

    def propose(meta_prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "text", "text": meta_prompt}]}]
        prompt = mllm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return _sample(mllm.model, mllm.tokenizer, prompt, max_new_tokens, temperature, seed + next(calls))

    return propose


def causal_lm_generator(model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto",
                        trust_remote_code: bool = False, max_new_tokens: int = 768, temperature: float = 0.8,
                        seed: int = 0) -> Callable[[str], str]:
    """Any causal LM (hub id or local dir), with its chat template when it has one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from x2dfd.errors import ModelNotFoundError
    from x2dfd.mllm import resolve_checkpoint, resolve_device, resolve_dtype

    source, local_only = resolve_checkpoint(model, revision)
    dev = resolve_device(device)
    common = dict(revision=revision, trust_remote_code=trust_remote_code, local_files_only=local_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, dev), device_map={"": str(dev)},
                                                  **common)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"cannot load --generator-model '{model}' as a causal LM: {err}") from err
    lm.eval()
    calls = iter(range(10**9))

    def propose(meta_prompt: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": meta_prompt}], add_generation_prompt=True,
                                                   tokenize=False)
        else:
            prompt = meta_prompt + "\n"
        return _sample(lm, tokenizer, prompt, max_new_tokens, temperature, seed + next(calls))

    return propose
