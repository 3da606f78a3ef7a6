"""The Python API: load a detector once, explain paths, PIL images or numpy arrays, get :class:`Record` objects.

    from x2dfd import load_detector

    detector = load_detector(mllm=None)                      # expert-only: works offline right after install
    detector = load_detector(model="./llava-1.5-7b-hf", adapter="runs/x2dfd-lora", device="cuda")
    records = detector.explain(["face.jpg", "clip.mp4", pil_image, rgb_array])
    for r in records:
        print(r.path, r.label, r.p_fake, r.experts, r.explanation)

It is the same pipeline, with the same options and the same records, as ``x2dfd explain`` (which is a
command-line layer over :func:`build_explainer`): ``model``, ``revision``, ``adapter``, ``device``,
``dtype``, ``load_in_4bit``, ``load_in_8bit``, ``trust_remote_code`` choose and load the MLLM
(:class:`x2dfd.modelargs.MLLMOptions`); ``batch_size``, ``max_new_tokens``, ``threshold``,
``face_crop``, ``all_faces``, ``frames``, ``aggregate`` ... shape the pipeline
(:class:`x2dfd.pipeline.PipelineOptions`); ``experts`` names the expert detectors, ``NAME`` or
``NAME=WEIGHTS`` as ``--expert`` (``None``: the adapter's recorded experts, else the default set,
``[]``: none); ``mllm=None`` gives expert-only verdicts with no MLLM loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from x2dfd.errors import UsageError
from x2dfd.modelargs import DEFAULT_MODEL, MLLMOptions
from x2dfd.pipeline import Explainer, Input, PipelineOptions
from x2dfd.records import Record

_MLLM_FIELDS = {f.name for f in dataclasses.fields(MLLMOptions)}
_PIPELINE_FIELDS = {f.name for f in dataclasses.fields(PipelineOptions)}


def load_experts(specs: Sequence[str] | None, device: str = "cpu") -> list:
    """The expert detectors to run: ``specs`` are registry keys, or ``NAME=WEIGHTS`` to load other weights
    (e.g. from ``x2dfd expert train``); ``None`` gives the default set, ``[]`` none."""
    from x2dfd import experts as experts_pkg

    chosen = list(experts_pkg.DEFAULT_EXPERTS) if specs is None else list(specs)
    loaded = []
    for spec in chosen:
        name, _, weights = spec.partition("=")
        loaded.append(experts_pkg.load_expert(name.strip(), device=device, weights=weights.strip() or None))
    names = [e.name for e in loaded]
    if len(set(names)) < len(names):
        raise UsageError(f"--expert: each expert name once per run (got {', '.join(names)}); compare two weights of "
                         "one expert in two runs")
    return loaded


def build_explainer(mllm_options: MLLMOptions | None, expert_names: Sequence[str] | None,
                    pipeline_options: PipelineOptions, device: str = "auto",
                    allow_expert_mismatch: bool | None = None) -> Explainer:
    """Load the MLLM (``None``: expert-only) and the experts once, and return the pipeline that every
    command, the demo and :class:`Detector` run. The experts run on the MLLM's device (else ``device``).

    ``expert_names=None``: a preset's experts (--preset, or preset.json in the adapter/model folder; for an adapter
    from ``x2dfd finetune`` the experts it was trained with, their weights checked by sha256), else the default
    set. Named experts that differ from an adapter's recorded ones (names, order, prompt words or weights) are a
    one-line UsageError unless ``allow_expert_mismatch`` (default: the options' ``allow_expert_mismatch``, i.e.
    ``--allow-expert-mismatch``); the outcome is ``explainer.expert_check`` (None without a record)."""
    from x2dfd.mllm import load_mllm, resolve_device

    device = str(resolve_device(mllm_options.device if mllm_options is not None else device))
    if allow_expert_mismatch is None:
        allow_expert_mismatch = any(bool(getattr(o, "allow_expert_mismatch", False))
                                    for o in (pipeline_options, mllm_options) if o is not None)
    specs, record, from_record = resolve_expert_specs(mllm_options, expert_names, pipeline_options,
                                                      allow_expert_mismatch)
    experts = load_experts(specs, device)  # before the MLLM: a mismatch is refused in seconds
    check = check_adapter_experts(record, specs, experts, allow_expert_mismatch, from_record)
    mllm = None if mllm_options is None else load_mllm(mllm_options)
    explainer = Explainer(mllm, experts, pipeline_options)
    explainer.expert_check = check
    if check is not None and check.get("template_version") not in (None, explainer.template_version):
        from x2dfd.log import get_logger

        get_logger("api").warning(f"x2dfd: warning: adapter '{check['adapter']}' was trained on question template "
                                  f"{check['template_version']}, this run asks {explainer.template_version}")
    return explainer


def resolve_expert_specs(mllm_options: Any, expert_names: Sequence[str] | None, pipeline_options: Any = None,
                         allow_expert_mismatch: bool = False) -> tuple[list[str], Any, bool]:
    """Before anything is loaded: the expert specs a run uses (``expert_names``; None: the preset's, i.e. an
    adapter's recorded experts, else the default set), the adapter's record (:func:`x2dfd.presets.training_record`,
    None without one or in expert-only mode) and whether the specs come from that record (then its NAME=WEIGHTS
    files are checked now: a missing one, or one whose sha256 changed, is a one-line UsageError)."""
    from x2dfd.experts import DEFAULT_EXPERTS
    from x2dfd.presets import check_recorded_files, preset_expert_specs, training_record

    record = training_record(mllm_options) if mllm_options is not None else None
    named = expert_names is not None
    if expert_names is None:
        # A preset's own experts (--preset, or preset.json in the adapter/model folder); else None: the default set.
        expert_names = preset_expert_specs(mllm_options if mllm_options is not None else pipeline_options)
    specs = list(DEFAULT_EXPERTS) if expert_names is None else list(expert_names)
    from_record = record is not None and not named and specs == record.expert_specs()
    if from_record:
        check_recorded_files(record, allow_expert_mismatch)
    return specs, record, from_record


def check_adapter_experts(record: Any, specs: Sequence[str], experts: Sequence, allow_expert_mismatch: bool = False,
                          from_record: bool = False) -> dict[str, Any] | None:
    """After the experts are loaded: compare them with the adapter's record (names, order, prompt words, weights
    sha256). A difference is a one-line UsageError naming both sets and --allow-expert-mismatch, unless allowed
    (then a warning). Returns what a run's config stores (None without a record)."""
    if record is None:
        return None
    from x2dfd.presets import compare_with_record, expert_entries

    check = compare_with_record(record, expert_entries(list(experts), list(specs)), allow_expert_mismatch, from_record)
    if check["status"] != "match":
        from x2dfd.log import get_logger

        get_logger("api").warning(f"x2dfd: warning: {check['status']}: adapter '{check['adapter']}' was trained with "
                                  "other experts than this run's (the run's config records both)")
    return check


class Detector:
    """A loaded MLLM + experts (load once, explain many times). Build it with :func:`load_detector`."""

    def __init__(self, explainer: Explainer):
        self.explainer = explainer

    @property
    def options(self) -> PipelineOptions:
        return self.explainer.options

    @property
    def mllm(self):
        """The loaded :class:`x2dfd.mllm.MLLM`, or None in expert-only mode."""
        return self.explainer.mllm

    @property
    def experts(self) -> list:
        return self.explainer.experts

    def iter_explain(self, inputs: Input | Iterable[Input]) -> Iterator[Record]:
        """Records as they finish (one per input; one per face with ``all_faces=True``)."""
        yield from self.explainer.run(_as_list(inputs))

    def explain(self, inputs: Input | Iterable[Input]) -> list[Record]:
        """One record per input, in input order: a path (image or video), a PIL image, a numpy array
        (HxW, HxWx3 RGB or HxWx4 RGBA; uint8, uint16 or float in [0, 1]) or ``(name, picture)``. An
        input that cannot be used gets an ``undetermined`` record with a one-line ``error``; the rest
        go on."""
        return list(self.iter_explain(inputs))

    def explain_one(self, item: Input) -> Record:
        """The record of one input (the largest face's, for a picture with several)."""
        return self.explain([item])[0]

    def __repr__(self) -> str:
        model = self.explainer.model_name or "none (expert-only)"
        return f"Detector(mllm={model!r}, experts={[e.name for e in self.experts]})"


def load_detector(model: str = DEFAULT_MODEL, *, mllm: str | None = "auto", experts: Sequence[str] | None = None,
                  allow_expert_mismatch: bool = False, **options: Any) -> Detector:
    """Load a detector: the MLLM ``model`` (a hub id or a local checkpoint directory; ``mllm=None`` or
    ``"none"``: no MLLM, expert-only verdicts) and the ``experts``; any other keyword is an option of
    ``x2dfd explain`` with the same name and meaning (``adapter``, ``device``, ``load_in_4bit``,
    ``batch_size``, ``max_new_tokens``, ``threshold``, ``face_crop``, ...). An ``adapter`` from ``x2dfd finetune``
    brings the experts it was trained with when ``experts`` is None; other ``experts`` are refused (one-line
    UsageError) unless ``allow_expert_mismatch=True`` (then ``detector.explainer.expert_check`` says so)."""
    unknown = sorted(set(options) - _MLLM_FIELDS - _PIPELINE_FIELDS)
    if unknown:
        available = ", ".join(sorted((_MLLM_FIELDS | _PIPELINE_FIELDS) - {"model"}))
        raise UsageError(f"unknown option(s) {', '.join(unknown)}. Available: mllm, experts, allow_expert_mismatch, "
                         f"model, {available}.")
    if mllm not in (None, "none", "auto"):
        raise UsageError(f"mllm={mllm!r}: give 'auto' (load the model) or None (expert-only)")
    if isinstance(experts, str):
        experts = [experts]
    pipeline = PipelineOptions(**{k: v for k, v in options.items() if k in _PIPELINE_FIELDS})
    mllm_kwargs = {k: v for k, v in options.items() if k in _MLLM_FIELDS}
    mllm_options = None if mllm in (None, "none") else MLLMOptions(model=model, **mllm_kwargs)
    return Detector(build_explainer(mllm_options, experts, pipeline, device=mllm_kwargs.get("device", "auto"),
                                    allow_expert_mismatch=allow_expert_mismatch))


def explain(inputs: Input | Iterable[Input], **options: Any) -> list[Record]:
    """One-shot: :func:`load_detector` with ``options``, then :meth:`Detector.explain` (load once with
    :func:`load_detector` when you have several batches)."""
    return load_detector(**options).explain(inputs)


def _as_list(inputs: Input | Iterable[Input]) -> list[Input]:
    import os

    if isinstance(inputs, (str, os.PathLike, tuple)) or not isinstance(inputs, Iterable) or _is_array(inputs):
        return [inputs]
    return list(inputs)


def _is_array(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "shape")
