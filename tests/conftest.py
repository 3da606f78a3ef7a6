"""Shared fixtures: tiny random checkpoints saved to tmp dirs and loaded back like a user's checkpoint.

Checkpoints built from ``../shared/checkpoints`` keep the real tokenizer, chat template and image
processor (token ids and prompts are the real ones); tests using them skip when ``../shared`` is
absent, and the self-contained tiny LLaVA still covers the whole path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKPOINTS = SHARED / "checkpoints"
DATA = SHARED / "data"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread, and on a loaded 2-core machine more threads spin.
    Module-scoped: a test file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} is not present")
    return path


def _tiny_from_shared(tmp_path_factory, name: str) -> Path:
    from x2dfd.tiny import build_checkpoint

    source = shared_path("checkpoints", name)
    return build_checkpoint(source, tmp_path_factory.mktemp(name.lower()) / "ckpt")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """llava-1.5-7b-hf's real config/tokenizer/processor, 2 text layers of width 64, 1 vision layer."""
    return _tiny_from_shared(tmp_path_factory, "llava-1.5-7b-hf")


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory) -> Path:
    return _tiny_from_shared(tmp_path_factory, "SmolVLM-256M-Instruct")


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory) -> Path:
    return _tiny_from_shared(tmp_path_factory, "Qwen2-VL-2B-Instruct")


@pytest.fixture(scope="session")
def selfcontained_llava(tmp_path_factory) -> Path:
    """A tiny LLaVA with its own tokenizer: needs nothing from ../shared."""
    from x2dfd.tiny import build_selfcontained_llava

    return build_selfcontained_llava(tmp_path_factory.mktemp("selfcontained") / "ckpt")


@pytest.fixture(scope="session")
def real_faces() -> list[Path]:
    """A few real face photos from ../shared (skip when absent)."""
    folder = shared_path("data", "stylegan2-vs-real", "images", "real")
    return sorted(folder.glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def swap_pair():
    """Two Unsplash portraits of different people (source, target) for the face-swap tests (skip when absent)."""
    from x2dfd.media import load_image

    real = shared_path("data", "stylegan2-vs-real", "images", "real")
    return load_image(real / "real_10.jpg"), load_image(real / "real_20.jpg")
