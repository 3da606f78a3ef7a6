"""The expert protocol and the registry: short name -> expert class, built-ins plus plugins.

    from x2dfd.experts import available_experts, load_expert
    available_experts()                       # ['blend', 'hf', ...plugins]
    expert = load_expert("blend")             # shipped offline weights
    expert.score([face_pil])                  # [ExpertScore(expert='blend', p_fake=0.87)]

An expert is a class with

* ``name`` (registry key) and ``prompt_name`` (the word X2-DFD's prompt uses: "the blending score is 0.873"),
* ``from_config(config: dict, device="cpu")``: build the architecture with random weights, nothing read;
* ``load_weights(path)``: read a safetensors file into it (never a pickle);
* ``load(weights=None, device="cpu", **kw)``: the two above, from a weights path (config JSON beside it)
  or the expert's default;
* ``score(faces) -> list[ExpertScore]``, ``localize(faces) -> list[np.ndarray] | None`` and ``info()``.

Third-party experts register without editing this project through the entry-point group
``x2dfd.experts``; in the plugin's pyproject::

    [project.entry-points."x2dfd.experts"]
    myexpert = "my_package.module:MyExpert"

The object must be a class with ``load(weights=None, device="cpu", **kw)`` (preferred) or a callable
with that signature returning an :class:`Expert`. Built-in names win over plugins of the same name.
This module does not import torch: listing experts and ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from x2dfd.errors import UsageError

ENTRY_POINT_GROUP = "x2dfd.experts"
DEFAULT_EXPERTS: tuple[str, ...] = ("blend",)

# Built-ins as "module:attr" strings so that the registry itself imports nothing heavy.
_BUILTIN: dict[str, str] = {
    "blend": "x2dfd.experts.blend:BlendExpert",
    "hf": "x2dfd.experts.hf:HFExpert",
    "swinv2": "x2dfd.experts.swinv2:SwinV2Expert",  # X2-DFD release's blending detector (x2dfd convert)
    "grip": "x2dfd.experts.grip:GripExpert",  # X2-DFD release's diffusion detector (x2dfd convert)
    "synthesis": "x2dfd.experts.synthesis:SynthesisExpert",  # fully synthetic faces (autoencoder pseudo-fakes)
}
_RUNTIME: dict[str, Any] = {}  # register_expert(...) at run time (tests, notebooks)


@runtime_checkable
class Expert(Protocol):
    """What the pipeline calls. ``localize`` returns None for experts that cannot localize
    (the ``hf`` expert does); blend returns one float32 HxW heatmap in [0, 1] per face, at the face's size."""

    name: str
    prompt_name: str

    def score(self, faces: Sequence[Any]) -> list[Any]: ...  # list[PIL.Image] -> list[ExpertScore]

    def localize(self, faces: Sequence[Any]) -> list[Any] | None: ...  # -> list[np.ndarray] | None

    def info(self) -> dict[str, Any]: ...


def register_expert(name: str, target: Any | str, *, overwrite: bool = False) -> None:
    """Register an expert class (or "module:attr" string) under ``name`` for this process."""
    if not overwrite and (name in _BUILTIN or name in _RUNTIME):
        raise UsageError(f"expert '{name}' is already registered; pass overwrite=True to replace it")
    _RUNTIME[name] = target


def unregister_expert(name: str) -> None:
    _RUNTIME.pop(name, None)


def _plugin_entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTIN or ep.name in _RUNTIME:
            warnings.warn(f"x2dfd.experts plugin '{ep.name}' ({ep.value}) is shadowed by a built-in expert of that name")
            continue
        found.setdefault(ep.name, ep)
    return found


def _registry() -> dict[str, Any]:
    """name -> class, "module:attr" string or EntryPoint. Re-read every call: plugins installed
    after import are seen, and nothing is imported until an expert is actually loaded."""
    reg: dict[str, Any] = dict(_BUILTIN)
    reg.update(_RUNTIME)
    for name, ep in _plugin_entry_points().items():
        reg.setdefault(name, ep)
    return reg


def available_experts() -> list[str]:
    """Registry keys: built-ins first (blend, hf), then plugins and run-time registrations, sorted."""
    reg = _registry()
    return list(_BUILTIN) + sorted(k for k in reg if k not in _BUILTIN)


def _unknown(name: str) -> UsageError:
    return UsageError(f"Unknown expert '{name}'. Available: {', '.join(available_experts())}.")


def get_expert_class(name: str) -> Any:
    """The class (or factory) registered as ``name``; imports its module now."""
    reg = _registry()
    if name not in reg:
        raise _unknown(name)
    target = reg[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    if hasattr(target, "load") and hasattr(target, "group") and hasattr(target, "value"):  # EntryPoint
        try:
            return target.load()
        except (ImportError, AttributeError) as err:
            raise UsageError(
                f"expert plugin '{name}' ({target.value}) could not be imported: {err}; reinstall the package that provides it"
            ) from err
    return target


def load_expert(name: str, device: str = "cpu", weights: str | None = None, **kw: Any) -> Expert:
    """Build expert ``name`` from its config, then load its weights (``weights``: a file or directory,
    a hub id for ``hf``; None = the expert's default, e.g. blend's shipped safetensors)."""
    target = get_expert_class(name)
    loader: Callable[..., Any] = target.load if hasattr(target, "load") else target
    expert = loader(weights=weights, device=device, **kw)
    if not isinstance(expert, Expert):
        raise UsageError(f"expert '{name}' returned {type(expert).__name__}, which lacks name/prompt_name/score/localize/info")
    return expert


def build_expert(name: str, config: dict[str, Any] | None = None, device: str = "cpu") -> Expert:
    """Build expert ``name`` from a config dict with random weights (no file read, nothing downloaded)."""
    target = get_expert_class(name)
    if not hasattr(target, "from_config"):
        raise UsageError(f"expert '{name}' cannot be built from a config (its class has no from_config)")
    return target.from_config(config or {}, device=device)
