"""Prompt templates (jinja2) and the forgery-cue bank.

Every prompt x2dfd sends is rendered here from a template file in this folder, then wrapped by the
checkpoint's own chat template (``x2dfd.mllm``). Templates carry a version (name + content hash)
that every record stores, so results stay traceable to the exact wording.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import jinja2

PROMPTS_DIR = Path(__file__).resolve().parent

# The answer the MLLM is teacher-forced to start with; its next token carries the verdict.
# X2-DFD trains answers of the form "This image is fake." / "This image is real."
ANSWER_PREFIX = "This image is"
VERDICT_WORDS = {"real": " real", "fake": " fake"}


@lru_cache(maxsize=None)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROMPTS_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text prompts; HTML reports have their own autoescaping environment
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def render_template(name: str, **context) -> str:
    """Render ``prompts/<name>`` with ``context``; surrounding whitespace is stripped."""
    return _env().get_template(name).render(**context).strip()


@lru_cache(maxsize=None)
def template_version(name: str) -> str:
    """``explain.jinja@1a2b3c4d``: the template's name and a hash of its text and the answer prefix."""
    text = (PROMPTS_DIR / name).read_text(encoding="utf-8")
    digest = hashlib.sha256((text + "\0" + ANSWER_PREFIX + "\0" + repr(sorted(VERDICT_WORDS.items()))).encode()).hexdigest()
    return f"{name}@{digest[:8]}"


def format_expert_score(p_fake: float | None) -> str:
    """X2-DFD writes expert evidence as "the blending score is 0.873"; a missing score is "N/A"."""
    return "N/A" if p_fake is None else f"{p_fake:.3f}"
