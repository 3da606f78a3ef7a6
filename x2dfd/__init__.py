"""x2dfd: explainable deepfake (face forgery) detection with multimodal LLMs (X2-DFD method).

    from x2dfd import load_detector
    detector = load_detector(mllm=None)             # expert-only; or model="DIR", adapter="DIR", ...
    for record in detector.explain(["face.jpg", pil_image, rgb_array]):
        print(record.label, record.p_fake, record.explanation)

(``x2dfd.explain`` is the command's module; the one-shot function is ``x2dfd.api.explain``.)
The names below are imported on first use, so ``import x2dfd`` (and ``x2dfd --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from x2dfd import compat as _compat  # noqa: E402,F401  (light: installs the bitsandbytes log filter before any import)

_EXPORTS = {
    "load_detector": "x2dfd.api",
    "Detector": "x2dfd.api",
    "load_experts": "x2dfd.api",
    "Record": "x2dfd.records",
    "PipelineOptions": "x2dfd.pipeline",
    "MLLMOptions": "x2dfd.modelargs",
    "X2DFDError": "x2dfd.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from x2dfd.api import Detector, load_detector, load_experts
    from x2dfd.errors import X2DFDError
    from x2dfd.modelargs import MLLMOptions
    from x2dfd.pipeline import PipelineOptions
    from x2dfd.records import Record


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'x2dfd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
