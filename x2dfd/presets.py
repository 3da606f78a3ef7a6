"""Presets: the exact prompt format, experts and verdict readout a published detector was trained with.

    x2dfd explain faces/ --preset x2dfd-release --adapter runs/x2dfd-release   # or just --adapter DIR:
    x2dfd explain faces/ --adapter runs/x2dfd-release                          #   DIR/preset.json is picked up
    x2dfd explain faces/ --preset fakevlm --model ./fakeVLM

A preset fixes

* ``checkpoint``: the base model used when ``--model`` is left at its default;
* ``chat_template``: a template in ``prompts/presets/`` (LLaVA's ``llava_v1`` / ``v1`` conversation with its
  ``system`` sentence) instead of the checkpoint's own chat template (``null``: the checkpoint's own);
* ``question``: a jinja2 string over ``experts`` = [{name, word, score}] in the preset's order, scores
  written with ``score_format`` or ``missing_score`` ("N/A") when an expert could not run or is absent;
* ``experts``: registry names (``weights`` relative to the preset's folder, ``absent`` when a release lacked them);
* the readout: ``answer_prefix`` + ``verdict_words``: P(fake) = softmax over the first sub-token logits of the two
  verdict words right after the prefix (where the model was trained to put its verdict);
* ``sources``: where each wording comes from (file and commit), or ``"status": "unverified"`` and what it is based on.

Built-ins live in ``prompts/presets/NAME.json``: ``x2dfd-release``, ``fakevlm``, ``x2dfd`` (x2dfd's own
prompt, i.e. the default behaviour). Without ``--preset`` and without a ``preset.json`` in the
``--adapter`` (then ``--model``) folder nothing changes. This module imports no torch at import time.

``x2dfd finetune`` writes its adapter folder's ``preset.json`` (:func:`write_training_record`): the ``x2dfd``
preset with the base model as ``checkpoint``, the experts whose scores were in the training questions (each
``name``, ``word``, ``weights`` (the NAME=WEIGHTS path, resolved; null: shipped), ``weights_file``, ``sha256``,
``shipped``; ``[]`` after --no-expert), ``template_version`` (the question template) and ``recorded_by``. At
inference those experts run when none are named; other ones (names, order, prompt words, weights by sha256), or
recorded weights that are missing or changed, are a one-line error unless ``--allow-expert-mismatch``
(:func:`check_recorded_files`, :func:`compare_with_record`, called by :func:`x2dfd.api.build_explainer`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2dfd.errors import UsageError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "prompts" / "presets"
try:  # installed layout: x2dfd.prompts is the prompts/ folder
    from x2dfd.prompts import PROMPTS_DIR as _PROMPTS_DIR

    PRESETS_DIR = _PROMPTS_DIR / "presets"
except ImportError:  # pragma: no cover
    pass

BUILTIN_PRESETS = ("x2dfd-release", "fakevlm", "x2dfd")
FOLDER_FILE = "preset.json"


@dataclass
class Preset:
    name: str
    checkpoint: str | None = None
    chat_template: str | None = None
    system: str | None = None
    question: str | None = None
    score_format: str = "{:.3f}"
    missing_score: str = "N/A"
    experts: list[dict[str, Any]] = field(default_factory=list)
    answer_prefix: str = "This image is"
    verdict_words: dict[str, str] = field(default_factory=lambda: {"real": " real", "fake": " fake"})
    readout: str = ""
    description: str = ""
    sources: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # where expert weights are looked up (the folder of a preset.json)
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the JSON as read

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path | None = None, origin: str = "preset") -> "Preset":
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise UsageError(f"{origin}: not a preset (a JSON object with a 'name')")
        known = {f for f in cls.__dataclass_fields__ if f not in ("folder", "data")}
        kwargs = {k: v for k, v in data.items() if k in known}
        preset = cls(**kwargs, folder=folder, data=copy.deepcopy(data))
        words = preset.verdict_words
        if set(words) != {"real", "fake"} or words["real"] == words["fake"]:
            raise UsageError(f"{origin}: verdict_words must give two different words for 'real' and 'fake'")
        for e in preset.experts:
            if not isinstance(e, dict) or not e.get("name") or not e.get("word"):
                raise UsageError(f"{origin}: every expert needs a 'name' (registry key) and a 'word' (prompt word)")
        if preset.chat_template and not (PRESETS_DIR / preset.chat_template).is_file():
            raise UsageError(f"{origin}: chat_template '{preset.chat_template}' is not a template in {PRESETS_DIR}")
        return preset

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.data) if self.data else {}
        for k in self.__dataclass_fields__:
            if k not in ("folder", "data"):
                out[k] = copy.deepcopy(getattr(self, k))
        return out

    # ------------------------------------------------------------------ prompts
    def changes_prompt(self) -> bool:
        from x2dfd.prompts import ANSWER_PREFIX, VERDICT_WORDS

        return bool(self.chat_template or self.question or self.answer_prefix != ANSWER_PREFIX
                    or dict(self.verdict_words) != dict(VERDICT_WORDS))

    def version(self) -> str:
        """``preset:NAME@hash`` of everything that shapes the prompt and the readout (stored in each record)."""
        template = (PRESETS_DIR / self.chat_template).read_text(encoding="utf-8") if self.chat_template else ""
        blob = json.dumps([template, self.system, self.question, self.score_format, self.missing_score,
                           [(e["name"], e["word"]) for e in self.experts], self.answer_prefix,
                           sorted(self.verdict_words.items())], sort_keys=True)
        return f"preset:{self.name}@{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

    def format_score(self, p: float | None) -> str:
        return self.missing_score if p is None else self.score_format.format(float(p))

    def render_question(self, scores: dict[str, float | None]) -> str:
        """The question with each preset expert's score (by registry name; absent or failed -> missing_score)."""
        if not self.question:
            raise UsageError(f"preset '{self.name}' has no question of its own")
        shown = [{"name": e["name"], "word": e["word"], "score": self.format_score(scores.get(e["name"]))}
                 for e in self.experts]
        return _jinja().from_string(self.question).render(experts=shown).strip()

    def render_prompt(self, question: str, answer_prefix: str | None = None) -> str:
        """The whole prompt text (chat template + question + answer prefix) the processor receives."""
        prefix = self.answer_prefix if answer_prefix is None else answer_prefix
        template = _jinja().get_template(self.chat_template)
        return template.render(system=self.system or "", question=question, answer_prefix=prefix)

    # ------------------------------------------------------------------ experts
    def expert_specs(self) -> list[str]:
        """``NAME`` or ``NAME=WEIGHTS`` for x2dfd's expert loader; experts marked ``absent`` are skipped
        (their score is written as missing, as the release's own code does for an expert that cannot run)."""
        specs = []
        for e in self.experts:
            if e.get("absent"):
                continue
            weights = e.get("weights")
            if weights and self.folder is not None and not Path(weights).is_absolute():
                # (a training record's weights that are no file in the folder are a hub id, kept as written)
                if not self.data.get(RECORD_KEY) or (self.folder / weights).exists():
                    weights = str(self.folder / weights)
            specs.append(f"{e['name']}={weights}" if weights else e["name"])
        return specs


def _jinja():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(PRESETS_DIR)), undefined=jinja2.StrictUndefined,
                              autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


# ---------------------------------------------------------------------------------- finding presets
def read_preset_file(path: str | Path) -> Preset:
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read preset '{path}': {err.strerror or err}") from err
    except ValueError as err:
        raise UsageError(f"preset '{path}' is not valid JSON: {err}") from err
    return Preset.from_dict(data, folder=path.parent, origin=f"preset '{path}'")


def builtin_preset(name: str) -> Preset:
    if name not in BUILTIN_PRESETS:
        raise UsageError(f"unknown preset '{name}'. Available: {', '.join(BUILTIN_PRESETS)}, or a preset JSON file")
    preset = read_preset_file(PRESETS_DIR / f"{name}.json")
    preset.folder = None  # built-in expert weights are not relative to the prompts folder
    return preset


def folder_preset(directory: str | None) -> Preset | None:
    """``DIR/preset.json`` of a local --adapter / --model folder, if there is one."""
    if not directory:
        return None
    path = Path(directory).expanduser() / FOLDER_FILE
    return read_preset_file(path) if path.is_file() else None


def resolve_preset(options: Any) -> Preset | None:
    """The preset for these MLLM options: ``--preset`` (a built-in name, a JSON file or a folder with preset.json;
    a built-in name whose folder preset.json has the same name takes that file, with its expert weights), else
    the --adapter folder's preset.json, else the --model folder's, else None (x2dfd's default behaviour)."""
    wanted = getattr(options, "preset", None)
    found = folder_preset(getattr(options, "adapter", None)) or folder_preset(getattr(options, "model", None))
    if not wanted:
        return found
    if wanted in BUILTIN_PRESETS:
        return found if found is not None and found.name == wanted else builtin_preset(wanted)
    path = Path(wanted).expanduser()
    if path.is_dir():
        preset = folder_preset(str(path))
        if preset is None:
            raise UsageError(f"--preset '{wanted}': the folder has no {FOLDER_FILE}")
        return preset
    if path.is_file():
        return read_preset_file(path)
    raise UsageError(f"unknown preset '{wanted}'. Available: {', '.join(BUILTIN_PRESETS)}, or a preset JSON file")


# ---------------------------------------------------------------------------------- integration hooks
def prepare_options(options: Any) -> tuple[Any, Preset | None]:
    """Called by ``load_mllm`` first: the preset, and the options with the preset's checkpoint when --model was left
    at its default (the caller's object is not changed)."""
    from x2dfd.modelargs import DEFAULT_MODEL

    preset = resolve_preset(options)
    if preset is not None and preset.checkpoint and options.model == DEFAULT_MODEL and preset.checkpoint != DEFAULT_MODEL:
        options = copy.copy(options)
        options.model = preset.checkpoint
    return options, preset


def verdict_token_ids(tokenizer, prefix: str, words: dict[str, str], model: str = "the model") -> tuple[int, int]:
    """First sub-token of each verdict word as it follows ``prefix``; the two must differ (used by MLLM too)."""
    ids = {}
    base = tokenizer(prefix, add_special_tokens=False).input_ids
    for label in ("real", "fake"):
        full = tokenizer(prefix + words[label], add_special_tokens=False).input_ids
        k = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), len(base))
        if k >= len(full):
            raise UsageError(f"the tokenizer of '{model}' cannot tokenize the verdict word {words[label]!r}")
        ids[label] = full[k]
    if ids["real"] == ids["fake"]:
        raise UsageError(f"the tokenizer of '{model}' maps {words['real']!r} and {words['fake']!r} to the same first token")
    return ids["real"], ids["fake"]


def attach_preset(mllm, preset: Preset | None):
    """Called by ``load_mllm`` last: make ``mllm`` prompt and read its verdict the preset's way.

    Sets ``mllm.preset`` (None: nothing changes), and where the preset changes the prompt:
    ``mllm.build_prompt`` (the preset's chat template), ``mllm.answer_prefix``, the verdict token ids and
    ``mllm.preset_version`` (the records' template_version)."""
    mllm.preset = preset
    if preset is None or not preset.changes_prompt():
        return mllm
    if preset.chat_template:
        image_token = getattr(mllm.processor, "image_token", None)
        if image_token != "<image>":
            raise UsageError(f"preset '{preset.name}' writes LLaVA's '<image>' prompt, but the processor of "
                             f"'{mllm.options.model}' uses {image_token!r}; use a LLaVA-1.5 checkpoint with this preset")

        def build_prompt(question: str, answer_prefix: str | None = None) -> str:
            return preset.render_prompt(question, answer_prefix)

        mllm.build_prompt = build_prompt
    mllm.answer_prefix = preset.answer_prefix
    mllm.real_id, mllm.fake_id = verdict_token_ids(mllm.tokenizer, preset.answer_prefix, preset.verdict_words,
                                                   mllm.options.model)
    mllm.preset_version = preset.version()
    return mllm


def preset_expert_specs(options: Any) -> list[str] | None:
    """The experts a preset runs (``NAME=WEIGHTS`` specs), or None when no preset applies (the default set)."""
    if getattr(options, "mllm", "auto") == "none" and not getattr(options, "preset", None):
        return None
    preset = resolve_preset(options)
    return None if preset is None else preset.expert_specs()


def write_folder_preset(preset: Preset | dict[str, Any], directory: str | Path, **extra: Any) -> Path:
    """Write ``DIR/preset.json`` (a preset plus ``extra`` fields such as the conversion record)."""
    data = preset.to_dict() if isinstance(preset, Preset) else dict(preset)
    data.update(extra)
    path = Path(directory) / FOLDER_FILE
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- the experts an adapter was trained with
# `x2dfd finetune` writes its adapter folder's preset.json as the built-in "x2dfd" preset (x2dfd's own prompt) with
# the experts whose scores were in the training questions, each with its prompt word, weights and their sha256, the
# question template's version and RECORD_KEY. At inference (explain, evaluate, the demo, load_detector) that file
# gives the experts when none are named, and a run that names other experts, or whose recorded weights are gone or
# changed, stops with one line unless ALLOW_FLAG.
RECORD_KEY = "recorded_by"
ALLOW_FLAG = "--allow-expert-mismatch"


def expert_entry(expert: Any, spec: str) -> dict[str, Any]:
    """The record of one loaded expert: ``name``, ``word`` (its prompt name), ``weights`` (the NAME=WEIGHTS path as
    given, resolved; None for the shipped default), ``weights_file`` (the file read), ``sha256`` of that file
    (None when the expert has no file, e.g. a hub id) and ``shipped`` (no weights were named)."""
    _, eq, given = spec.partition("=")
    given = given.strip() if eq else ""
    info = expert.info() if hasattr(expert, "info") else {}
    info = info if isinstance(info, dict) else {}
    file = info.get("weights")
    weights = None
    if given:
        path = Path(given).expanduser()
        weights = str(path.resolve()) if path.exists() else given  # a hub id stays as written
    if file and Path(str(file)).expanduser().exists():
        file = str(Path(str(file)).expanduser().resolve())
    return {"name": expert.name, "word": getattr(expert, "prompt_name", expert.name), "weights": weights,
            "weights_file": str(file) if file else None, "sha256": info.get("sha256"), "shipped": not given}


def expert_entries(experts: list, specs: list[str]) -> list[dict[str, Any]]:
    """:func:`expert_entry` of each loaded expert (``specs``: what was asked for, in the same order)."""
    return [expert_entry(e, s) for e, s in zip(experts, specs)]


def write_training_record(directory: str | Path, entries: list[dict[str, Any]], template_version: str | None,
                          checkpoint: str | None = None, **recorded_by: Any) -> Path:
    """``DIR/preset.json``: the "x2dfd" preset with the experts the adapter in DIR was trained with ([] for
    --no-expert: "no experts"), the question template version and who wrote it."""
    preset = builtin_preset("x2dfd").to_dict()
    preset["description"] = ("written by x2dfd finetune: x2dfd's own prompt and the experts whose scores were in the "
                             "training questions (used by default at inference; other experts are refused unless "
                             f"{ALLOW_FLAG})")
    if checkpoint:
        preset["checkpoint"] = checkpoint
    preset["experts"] = [dict(e) for e in entries]
    preset["template_version"] = template_version
    preset[RECORD_KEY] = {"command": "x2dfd finetune", **recorded_by}
    return write_folder_preset(preset, directory)


def training_record(options: Any) -> Preset | None:
    """The preset.json ``x2dfd finetune`` wrote into the --adapter (else --model) folder, or None (no folder preset,
    or one written by something else, e.g. ``x2dfd convert``)."""
    found = folder_preset(getattr(options, "adapter", None)) or folder_preset(getattr(options, "model", None))
    return found if found is not None and found.data.get(RECORD_KEY) else None


def describe_experts(entries: list[dict[str, Any]]) -> str:
    """``[blend (shipped, sha256 1a2b3c4d5e6f), hf=org/model]``; ``[none]`` for no experts."""
    if not entries:
        return "[none]"
    out = []
    for e in entries:
        text = e["name"] if e.get("shipped") or not e.get("weights") else f"{e['name']}={e['weights']}"
        sha = (e.get("sha256") or "")[:12]
        extra = ", ".join(x for x in ("shipped" if e.get("shipped") else "", f"sha256 {sha}" if sha else "") if x)
        out.append(f"{text} ({extra})" if extra else text)
    return "[" + ", ".join(out) + "]"


def _record_folder(record: Preset) -> str:
    return str(record.folder) if record.folder is not None else record.name


def _recorded_file(record: Preset, entry: dict[str, Any]) -> Path | None:
    file = entry.get("weights_file") or entry.get("weights")
    if not file or entry.get("shipped"):
        return None
    path = Path(str(file)).expanduser()
    if not path.is_absolute() and record.folder is not None:
        path = record.folder / path
    return path


def check_recorded_files(record: Preset, allow: bool = False) -> None:
    """Before the adapter's own experts are loaded: each recorded NAME=WEIGHTS file is still there and has its
    recorded sha256 (a changed file is refused unless ``allow``; a missing one always)."""
    from x2dfd.media import weights_sha256

    folder = _record_folder(record)
    for e in record.experts:
        path = _recorded_file(record, e)
        if path is None or not e.get("sha256") or e.get("absent"):
            continue
        if not path.is_file():
            raise UsageError(f"adapter '{folder}' was trained with {e['name']} weights '{path}' (sha256 "
                             f"{e['sha256'][:12]}), which is missing: put that file back, or give --expert "
                             f"{e['name']}=FILE {ALLOW_FLAG} to run with other weights")
        sha = weights_sha256(path)
        if sha != e["sha256"] and not allow:
            raise UsageError(f"{e['name']} weights '{path}' changed since adapter '{folder}' was trained with them "
                             f"(sha256 now {sha[:12]}, recorded {e['sha256'][:12]}): put the original file back, or "
                             f"add {ALLOW_FLAG} to run with the file as it is")


def _differs(recorded: dict[str, Any], used: dict[str, Any]) -> bool:
    if recorded.get("name") != used.get("name") or recorded.get("word") != used.get("word"):
        return True
    return bool(recorded.get("sha256")) and recorded.get("sha256") != used.get("sha256")


def compare_with_record(record: Preset, used: list[dict[str, Any]], allow: bool = False,
                        from_record: bool = False) -> dict[str, Any]:
    """This run's experts (:func:`expert_entries`) against the adapter's record: the same names in the same order,
    the same prompt words, the same weights (sha256, where recorded). A difference is a one-line UsageError naming
    both sets, unless ``allow``; returns what the run's config stores (``status``: "match" or "mismatch allowed by
    --allow-expert-mismatch")."""
    recorded = [e for e in record.experts if not e.get("absent")]
    mismatch = len(recorded) != len(used) or any(_differs(r, u) for r, u in zip(recorded, used))
    folder = _record_folder(record)
    if mismatch and not allow:
        if from_record:  # nothing was named: the adapter's own experts loaded other weights (e.g. new shipped ones)
            hint = (f"give --expert NAME=FILE with the weights it was trained with, or add {ALLOW_FLAG} to run with "
                    "these")
        else:
            hint = (f"leave out --expert/--no-expert/--preset to use the adapter's experts, or add {ALLOW_FLAG} to "
                    "run anyway")
        raise UsageError(f"adapter '{folder}' was trained with experts {describe_experts(recorded)}, but this run has "
                         f"{describe_experts(used)}: {hint}")
    return {"adapter": folder, "recorded": recorded, "used": used,
            "template_version": record.data.get("template_version"),
            "status": f"mismatch allowed by {ALLOW_FLAG}" if mismatch else "match"}
