"""The fine-tuned adapter's model card (``README.md`` in Hugging Face's format) and its loss curve.

    write_model_card(out_dir, resolved_config, metrics)   # YAML front matter + what/how/data/metrics
    plot_loss(loss_rows, eval_rows, out_dir / "loss.png")

The front matter carries what the Hub reads: ``base_model``, ``library_name: peft``, ``pipeline_tag``,
``tags`` and a ``model-index`` with the held-out AUC and accuracy. The body says how it was trained
(cues, experts, data balance, LoRA targets, schedule), how to use it (``x2dfd explain --adapter``) and
what the training answers are made of, counted from the ``train.jsonl`` it was trained on (distinct
answers, cues per answer, answers with no supported cue, with a rationale, with an expert sentence),
whether they are grounded per face, the uninformative cues, and the rationale's label conditioning. Data built
with ``--top-k 0`` (``weak_only`` in ``data.json``): the card says the answers carry no cues, "Weak Feature
Supplementing only" (plain verdict fine-tuning when no expert was used either), with no cue table or ranking.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CITATION = ("Chen et al., *X2-DFD: A framework for eXplainable and eXtendable Deepfake Detection*, "
            "NeurIPS 2025.")


def _front_matter(resolved: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    cfg = resolved["config"]
    tags = ["x2dfd", "deepfake-detection", "explainable-ai", "lora", "peft"]
    if resolved.get("quantization"):
        tags.append("qlora")
    meta: dict[str, Any] = {"base_model": cfg["model"], "library_name": "peft", "pipeline_tag": "image-text-to-text",
                            "tags": tags}
    final = metrics.get("final") or {}
    values = [(k, name, final.get(k)) for k, name in (("auc", "AUC"), ("accuracy", "Accuracy")) if final.get(k) is not None]
    if values:
        meta["metrics"] = ["roc_auc", "accuracy"]
        meta["model-index"] = [{
            "name": Path(cfg["out"]).name or "x2dfd-adapter",
            "results": [{
                "task": {"type": "image-classification", "name": "Deepfake detection (p_fake of the verdict token)"},
                "dataset": {"type": "custom", "name": f"held-out split of {cfg.get('data') or resolved['data']['dir']}"},
                "metrics": [{"type": "roc_auc" if k == "auc" else k, "value": v, "name": f"held-out {name}"}
                            for k, name, v in values],
            }],
        }]
    return meta


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def auc_text(ev: dict[str, Any], counts: bool = True) -> str:
    """A held-out AUC (``metrics.json``'s ``eval_before`` / ``epochs`` entries) with its 95% interval:
    ``0.7361 [0.55, 0.88] (18: 6 real, 12 fake)`` (``n/a (18: 18 real, 0 fake)`` without an AUC), as the
    training log writes it; ``counts=False``: ``0.7361 [0.55, 0.88]`` (``-`` without an AUC), the card's cell."""
    auc, ci = ev.get("auc"), ev.get("auc_ci95")
    n = f" ({ev.get('n', 0)}: {ev.get('n_real', 0)} real, {ev.get('n_fake', 0)} fake)" if counts else ""
    if auc is None:
        return ("n/a" if counts else "-") + n
    return _fmt(auc) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + n


def read_data(data_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(train rows, data.json)`` of a data folder (empty where a file is missing or a line unreadable)."""
    from x2dfd.finetune.data import INFO_FILE, SPLIT_FILES
    from x2dfd.records import read_jsonl_text

    data_dir = Path(data_dir)
    rows = []
    path = data_dir / SPLIT_FILES["train"]
    if path.is_file():
        for _, line in read_jsonl_text(path, errors="replace"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    try:
        info = json.loads((data_dir / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    return rows, info if isinstance(info, dict) else {}


def answer_lines(rows: list[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    """The model card's "Training answers" section: what the answers are made of, counted from train.jsonl."""
    from x2dfd.finetune.data import RATIONALE_CAVEAT, answer_composition

    comp = answer_composition(rows)
    c = comp["cues_per_answer"]
    grounding = info.get("grounding") or {}
    unin = info.get("uninformative_cues") or {}
    rat = info.get("rationale") if isinstance(info.get("rationale"), dict) else {}
    if not rows:
        return ["No training answer could be read from `data/train.jsonl`.", ""]
    n = comp["answers"]
    weak = bool(info.get("weak_only"))
    if weak:
        how = ("Weak Feature Supplementing only (`--top-k 0`): the answers carry no cues. No cue sentence is in any "
               "answer and no cue ranking was used; each answer is the verdict, the base model's rationale where one "
               "was written, and an expert sentence where the expert agrees with the label by X2-DFD's margin.")
    elif grounding.get("grounded"):
        how = ("Each answer states only those of the top cues that the base model's own evidence on THAT face "
               "supports: its P(yes) for the cue is above the cue's decision threshold from the ranking (fake, stated "
               "present) or below it (real, stated absent); unsupported cues are omitted.")
    elif grounding:
        how = ("The answers are NOT grounded per face (`--cue-order rank`): every answer states the ranking's top cues, "
               "whether or not the base model perceives them on that face.")
    else:
        how = "How the cues were chosen is not recorded (data built by hand or by an older x2dfd)."
    lines = [how, "", "Counted from the training split (`data/train.jsonl`):", "",
             f"- answers: {n}; distinct: {comp['distinct']} (real {comp['by_label']['real']['distinct']} of "
             f"{comp['by_label']['real']['answers']}, fake {comp['by_label']['fake']['distinct']} of "
             f"{comp['by_label']['fake']['answers']}); the most repeated answer occurs {comp['most_repeated']} times",
             *(["- cues stated per answer: none (`--top-k 0`)"] if weak else
               [f"- cues stated per answer: mean {c['mean']:.2f}, min {c['min']}, max {c['max']}",
                f"- answers with no supported cue (verdict without a cue sentence): {comp['no_cue']['real']} real, "
                f"{comp['no_cue']['fake']} fake"]),
             f"- answers with a rationale by the base model: {comp['with_rationale']}",
             f"- answers with an expert sentence (expert agrees by X2-DFD's margin): {comp['with_expert_sentence']}"]
    ids = unin.get("ids") or []
    if not weak:  # --top-k 0: no cue, none uninformative
        named = f" ({', '.join(f'`{i}`' for i in ids)}; trained on with `--allow-uninformative`)" if ids else ""
        lines.append(f"- uninformative cues (AUC CI covers 0.5) among the top cues: {len(ids)}{named}")
    if rat.get("enabled"):
        spf = rat.get("seconds_per_face")
        lines += ["", f"Rationales (asked for {rat.get('faces')} faces, {_fmt(spf)} s per face, at most "
                  f"{rat.get('max_new_tokens')} tokens; kept where a sentence was completed) were written by the base "
                  f"model {RATIONALE_CAVEAT[weak]}."
                  + ("" if comp["with_rationale"] else " None ended a sentence, so no answer carries one.")]
    return lines + [""]


def render_model_card(resolved: dict[str, Any], metrics: dict[str, Any]) -> str:
    cfg = resolved["config"]
    data = resolved["data"]
    lora = resolved["lora"]
    meta = yaml.safe_dump(_front_matter(resolved, metrics), sort_keys=False, allow_unicode=True).strip()
    experts = "none (`--no-expert`)" if cfg.get("no_expert") else ", ".join(cfg.get("expert") or []) or "blend (default)"
    balance = data.get("balance") or {}
    train_b, eval_b = balance.get("train") or {}, balance.get("eval") or {}
    cue_lines = [f"| {c.get('rank', '-')} | `{c['id']}` | {_fmt(c.get('auc'))}"
                 f"{' (uninformative)' if 'uninformative' in (c.get('flags') or ()) else ''} | {_fmt(c.get('threshold'))} "
                 f"| {c['present']} |" for c in data.get("cues") or []]
    before = metrics.get("eval_before") or {}
    eval_lines = ([f"| before training | {auc_text(before, counts=False)} | {_fmt(before.get('accuracy'))} |"]
                  if before else [])
    eval_lines += [f"| epoch {e['epoch']} (step {e['step']}) | {auc_text(e, counts=False)} | {_fmt(e.get('accuracy'))} |"
                   for e in metrics.get("epochs") or []]
    train = metrics.get("train") or {}
    rows, info = read_data(data["dir"]) if data.get("dir") else ([], {})
    grounded = (info.get("grounding") or {}).get("grounded")
    explanation = ("an explanation built from the forgery cues ranked best for the base model that its own P(yes) "
                   "supports on each training face" if grounded else
                   "an explanation stating the forgery cues ranked best for the base model (not checked per face)"
                   if grounded is False else "an explanation (see Training answers)")
    q = " --load-in-4bit" if resolved.get("quantization") == "4bit" else ""
    no_expert = " --no-expert" if cfg.get("no_expert") else ""
    weak = bool(info.get("weak_only") or data.get("weak_only"))  # --top-k 0: no cue in any answer, no ranking
    if weak and resolved.get("experts"):
        what = ("\"This image is real.\" / \"This image is fake.\", then, where the external expert whose score is "
                "written into the question clearly agrees with the label, a sentence on that score: Weak Feature "
                "Supplementing only (`--top-k 0`), the answers carry no cues (no Strong Feature Strengthening, no "
                "cue ranking).")
    elif weak:
        what = ("\"This image is real.\" / \"This image is fake.\" alone (`--top-k 0` without an expert): plain "
                "verdict fine-tuning, the answers carry no cues and the questions no expert score.")
    else:
        what = (f"\"This image is real.\" / \"This image is fake.\" and {explanation} (Strong Feature Strengthening), "
                "and to read an external expert's score written into the question (Weak Feature Supplementing).")
    if weak:
        cue_section = ["- cues: none (`--top-k 0`: Weak Feature Supplementing only; no ranking, no cue sentence)", ""]
    else:
        cue_section = [
            f"- cues (top {cfg.get('top_k')} of the ranking, at most {cfg.get('cues_per_answer')} per answer); ranking "
            f"fingerprint `{(resolved.get('ranking_fingerprint') or '-')[:16]}`:", "",
            "| rank | cue | AUC (base model) | threshold on P(yes) | stated for fakes as |", "|---|---|---|---|---|",
            *cue_lines, ""]
    lines = [
        "---", meta, "---", "",
        f"# {Path(cfg['out']).name or 'x2dfd adapter'}: explainable deepfake detection LoRA for `{cfg['model']}`", "",
        "A LoRA adapter (plus the fully trained vision-language projector) made with `x2dfd finetune`, following "
        "X2-DFD (Chen et al., NeurIPS 2025): the model is trained to answer the question of `x2dfd explain` with "
        f"{what} P(fake) is the softmax of the \" real\"/\" fake\" logits after \"This image is\".",
        "", "## Use", "", "```bash",
        f"x2dfd explain faces/ --model {cfg['model']} --adapter ADAPTER_DIR{q}{no_expert} --out results.jsonl",
        f"x2dfd assess data/ --model {cfg['model']} --adapter ADAPTER_DIR --out assess-tuned/   # which cues got stronger",
        "```", "",
        "## Training data", "",
        f"- source: `{cfg.get('data') or data['dir']}`; {data['train']} training and {data['held_out']} held-out samples "
        f"(data fingerprint `{data['fingerprint'][:16]}`)",
        f"- class balance (train): {train_b.get('real', '-')} real, {train_b.get('fake', '-')} fake "
        f"(`--balance {cfg.get('balance')}`); held-out: {eval_b.get('real', '-')} real, {eval_b.get('fake', '-')} fake",
        f"- expert(s) in the question: {experts}",
        *cue_section,
        "## Training answers", "", *answer_lines(rows, info),
        "## Training", "",
        f"- LoRA r {cfg['lora_r']}, alpha {cfg['lora_alpha']}, dropout {cfg['lora_dropout']} on {lora['layers']} linear "
        f"layers of `{lora['language_model']}` (regex `{lora['target_regex']}`); vision tower frozen; projector "
        f"`{lora.get('projector')}` trained at lr {cfg['projector_lr']}",
        f"- trainable parameters: {lora['trainable']['trainable']:,} of {lora['trainable']['total']:,} "
        f"({lora['trainable']['percent']}%)",
        f"- lr {cfg['lr']} ({cfg['scheduler']}, warmup {cfg['warmup_ratio']}), {resolved['schedule']['total_updates']} "
        f"optimizer steps, effective batch {resolved['schedule']['effective_batch']}, {resolved['processes']} process(es), "
        f"{resolved['dtype']}{', 4-bit NF4 base (QLoRA)' if resolved.get('quantization') == '4bit' else ''}, "
        f"seed {cfg['seed']}",
        f"- final training loss {_fmt(train.get('final_loss'))} after {_fmt(train.get('seconds'))} s (curve: `loss.png`, "
        "`loss.jsonl`)", "",
        "## Evaluation (held-out p_fake)", "",
        "| when | AUC [95% CI] | accuracy at 0.5 |", "|---|---|---|", *eval_lines, "",
        "The interval resamples the held-out faces (whole videos where they have one), 1000 times: a split of a few "
        "dozen faces gives a wide one, so compare runs on a proper test set (`x2dfd evaluate`).", "",
        "Files: `adapter_config.json`, `adapter_model.safetensors`, processor files, `finetune.config.json` (resolved "
        "options), " + ("no `ranking.json` (no cue ranking: `--top-k 0`)" if weak else
                        "`ranking.json` (the cue ranking trained from)") + ", `metrics.json`.", "",
        "## Reference", "", CITATION, "",
    ]
    return "\n".join(lines)


def write_model_card(out_dir: str | Path, resolved: dict[str, Any], metrics: dict[str, Any]) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(resolved, metrics), encoding="utf-8")
    return path


def plot_loss(losses: list[dict[str, Any]], evals: list[dict[str, Any]], path: str | Path) -> None:
    """Training loss per optimizer step, and the held-out AUC after each epoch on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    if losses:
        ax.plot([r["step"] for r in losses], [r["loss"] for r in losses], color="#2471a3", linewidth=1, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    scored = [e for e in evals if e.get("auc") is not None]
    if scored:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in scored], [e["auc"] for e in scored], "o-", color="#c0392b", label="held-out AUC")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("held-out AUC")
    ax.set_title("x2dfd finetune", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
