"""`x2dfd finetune`: answer wording, data building, exact loss masking, LoRA scope, outputs, resume, QLoRA, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from x2dfd.experts import register_expert, unregister_expert
from x2dfd.feature_assessment.cache import ScoreStore
from x2dfd.feature_assessment.cues import load_cues
from x2dfd.finetune import data as ftdata
from x2dfd.finetune.batch import IGNORE, AnswerEncoder
from x2dfd.finetune.config import FinetuneConfig
from x2dfd.finetune.lora import add_lora, find_parts, load_for_training, lora_modules, target_regex
from x2dfd.finetune.synthetic import make_seam_dataset
from x2dfd.finetune.train import list_checkpoints, run_finetune
from x2dfd.finetune.train import main as finetune_main
from x2dfd.prompts import ANSWER_PREFIX
from x2dfd.errors import UsageError
from x2dfd.media import file_sha256
from x2dfd.records import ExpertScore

REPO = Path(__file__).resolve().parents[1]
CUE_IDS = ["boundary.jawline_seam", "skin_texture.no_pores", "eyes.pupil_shape", "lighting.direction_mismatch"]


# ------------------------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class StubExpert:
    """A deterministic expert: p_fake = mean red level of the face (so scores differ across images)."""

    name = "stub"
    prompt_name = "stubbing"

    @classmethod
    def load(cls, weights=None, device="cpu", **kw):
        return cls()

    def score(self, faces):
        return [ExpertScore("stub", float(np.asarray(f.convert("RGB"))[..., 0].mean() / 255.0)) for f in faces]

    def localize(self, faces):
        return None

    def info(self):
        return {"name": self.name}


@pytest.fixture
def stub_expert():
    register_expert("stub", StubExpert, overwrite=True)
    yield "stub"
    unregister_expert("stub")


def _ranking(folder: Path, flags: dict[str, list[str]] | None = None) -> Path:
    """A ranking.json as `x2dfd assess` writes it (the fields finetune reads), cues in CUE_IDS order."""
    bank = load_cues(only=CUE_IDS).by_id()
    flags = flags or {}
    rows = [{"id": c, "region": bank[c].region, "question": bank[c].question, "present": bank[c].present,
             "absent": bank[c].absent, "rank": i + 1, "auc": round(0.9 - 0.05 * i, 3), "flags": flags.get(c, [])}
            for i, c in enumerate(CUE_IDS)]
    folder.mkdir(parents=True, exist_ok=True)
    ranking = {"command": "assess", "model": {"model": "base"}, "setting": {"id": "assess-setting"},
               "scores_path": "scores.jsonl", "cues": rows}
    (folder / "ranking.json").write_text(json.dumps(ranking))
    return folder / "ranking.json"


@pytest.fixture(scope="module")
def seam_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seam")
    make_seam_dataset(root / "data", 8, 8, size=48, seed=3)
    return root / "data"


@pytest.fixture(scope="module")
def trained(seam_data, selfcontained_llava, tmp_path_factory):
    """One small finetune run (stub expert, per-image cue scores half from the assess cache)."""
    register_expert("stub", StubExpert, overwrite=True)
    root = tmp_path_factory.mktemp("trained")
    ranking = _ranking(root / "mfa")
    store = ScoreStore(root / "mfa" / "scores.jsonl")
    cached = {}
    for i, path in enumerate(sorted(seam_data.rglob("*.png"))[::2]):
        p_yes = {c: round(0.1 + 0.2 * ((i + k) % 4), 3) for k, c in enumerate(CUE_IDS)}
        store.add_scores("assess-setting", file_sha256(path), p_yes, path=str(path), label=int("fake" in path.parts[-2]))
        cached[str(path.resolve())] = p_yes
    store.close()
    out = root / "run"
    cfg = FinetuneConfig(data=str(seam_data), ranking=str(ranking), model=str(selfcontained_llava), out=str(out),
                         face_crop=False, expert=["stub"], epochs=2, batch_size=4, eval_fraction=0.25, top_k=3,
                         cues_per_answer=2, lr=1e-3, quiet=True)
    try:
        result = run_finetune(cfg)
    finally:
        unregister_expert("stub")
    return {"out": out, "result": result, "cached": cached, "ranking": ranking, "cfg": cfg}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ wording
def test_answer_golden_strings():
    render = ftdata.render_answer
    assert render(1, ["the skin looks waxy", "a pupil has an irregular, non-round shape", "a seam runs along the jaw"],
                  [{"prompt_name": "blending", "score": "0.912"}]) == (
        "This image is fake. The skin looks waxy, a pupil has an irregular, non-round shape and a seam runs along the "
        "jaw. The blending score of 0.912 is high, which also points to a forged face.")
    assert render(0, ["both pupils are round", "the skin shows natural pores"],
                  [{"prompt_name": "blending", "score": "0.041"}]) == (
        "This image is real. Both pupils are round and the skin shows natural pores. The blending score of 0.041 is "
        "low, which also points to an unaltered face.")
    assert render(1, ["a seam runs along the jaw"]) == "This image is fake. A seam runs along the jaw."
    assert render(0, []) == "This image is real."
    assert render(1, ["x is y"], rationale="The seam gives it away.") == "This image is fake. X is y. The seam gives it away."
    assert ftdata.answer_head(1) == "This image is fake." and ftdata.answer_head(0) == "This image is real."


def test_question_is_explains_question(stub_expert):
    from x2dfd.pipeline import Explainer, PipelineOptions

    explainer = Explainer(None, [StubExpert()], PipelineOptions())
    for scores in ({"stub": 0.8731}, {"stub": None}, {}):
        assert ftdata.render_question([("stub", "stubbing")], scores) == explainer.question(scores)
    assert "the stubbing score is 0.873 " in ftdata.render_question([("stub", "stubbing")], {"stub": 0.8731})
    assert "the stubbing score is N/A " in ftdata.render_question([("stub", "stubbing")], {"stub": None})
    assert "score" not in ftdata.render_question([], {})


@pytest.mark.parametrize("label,score,stated", [(1, 0.70, True), (1, 0.6999, False), (1, 0.2, False), (0, 0.30, True),
                                                (0, 0.3001, False), (0, 0.9, False), (1, None, False)])
def test_expert_sentence_follows_x2dfd_thresholds(label, score, stated):
    support = ftdata.supporting_experts(label, [("blend", "blending")], {"blend": score})
    assert bool(support) is stated
    if stated:
        assert support == [{"prompt_name": "blending", "score": f"{score:.3f}"}]


def test_strong_cues_and_per_image_order(tmp_path):
    ranking, _ = ftdata.load_ranking(_ranking(tmp_path, flags={"skin_texture.no_pores": ["inverted"]}))
    strong = ftdata.strong_cues(ranking, 2)
    assert [c["id"] for c in strong] == ["boundary.jawline_seam", "eyes.pupil_shape"]  # inverted one skipped
    three = ftdata.strong_cues(ranking, 3)
    p = {"boundary.jawline_seam": 0.2, "eyes.pupil_shape": 0.9, "lighting.direction_mismatch": 0.5}
    thr = {"boundary.jawline_seam": {"threshold": 0.1}, "eyes.pupil_shape": {"threshold": 0.5},
           "lighting.direction_mismatch": {"threshold": 0.5}}
    # fake: above the threshold, farthest first (0.9 - 0.5 > 0.2 - 0.1); 0.5 sits on its threshold: not stated
    assert [c["id"] for c in ftdata.grounded_cues(1, p, three, thr)] == ["eyes.pupil_shape", "boundary.jawline_seam"]
    assert ftdata.grounded_cues(0, p, three, thr) == []  # real: nothing below its threshold
    assert ftdata.grounded_cues(1, {}, three, thr) == []  # no score for the face: nothing supported
    assert ftdata.cue_phrases(1, three[:1]) == [three[0]["present"]]
    assert ftdata.cue_phrases(0, three[:1]) == [three[0]["absent"]]
    all_bad, _ = ftdata.load_ranking(_ranking(tmp_path / "b", flags={c: ["inverted"] for c in CUE_IDS}))
    with pytest.raises(UsageError, match="inverted"):
        ftdata.strong_cues(all_bad, 3)
    with pytest.raises(UsageError, match="does not exist"):
        ftdata.load_ranking(tmp_path / "nowhere")


def test_split_keeps_videos_together_and_rebalance():
    rows = [{"sha256": f"s{i}", "label": int(i >= 12), "video_id": f"v{i // 3}", "order": i} for i in range(30)]
    train, held = ftdata.split_rows(rows, 0.25, seed=0)
    assert len(train) + len(held) == 30
    assert {r["video_id"] for r in train}.isdisjoint({r["video_id"] for r in held})
    assert {r["label"] for r in held} == {0, 1}
    counts = ftdata.class_balance(rows)
    assert counts == {"real": 12, "fake": 18, "fake_per_real": 1.5}
    assert ftdata.class_balance(ftdata.rebalance(rows, "undersample", 0)) == {"real": 12, "fake": 12, "fake_per_real": 1.0}
    over = ftdata.rebalance(rows, "oversample", 0)
    assert ftdata.class_balance(over) == {"real": 18, "fake": 18, "fake_per_real": 1.0}
    assert ftdata.rebalance(rows, "none", 0) == rows
    assert ftdata.split_rows(rows, 0.0, 0) == (rows, [])


def test_clean_rationale():
    assert ftdata.clean_rationale("  The seam is sharp.  The skin is waxy. And then ") == "The seam is sharp. The skin is waxy."
    assert ftdata.clean_rationale("no sentence end") is None
    assert ftdata.clean_rationale("One. Two. Three.", max_sentences=1) == "One."


def test_auc_text_for_the_log_and_the_card():
    """One formatter of a held-out AUC: the training log's line (with counts) and the card's table cell."""
    from x2dfd.finetune import train
    from x2dfd.finetune.card import auc_text

    assert train.auc_text is auc_text
    ev = {"auc": 0.736123, "auc_ci95": [0.5512, 0.8849], "n": 18, "n_real": 6, "n_fake": 12}
    assert auc_text(ev) == "0.7361 [0.55, 0.88] (18: 6 real, 12 fake)"
    assert auc_text(ev, counts=False) == "0.7361 [0.55, 0.88]"
    assert auc_text({"auc": 0.5, "n": 4, "n_real": 2, "n_fake": 2}) == "0.5000 (4: 2 real, 2 fake)"
    one_class = {"auc": None, "n": 3, "n_real": 3, "n_fake": 0}
    assert auc_text(one_class) == "n/a (3: 3 real, 0 fake)" and auc_text(one_class, counts=False) == "-"


# ------------------------------------------------------------------------------------------------ data building
def test_built_data(trained):
    out, cached = trained["out"], trained["cached"]
    data_dir = out / "data"
    info = json.loads((data_dir / "data.json").read_text())
    train, held = _rows(data_dir / "train.jsonl"), _rows(data_dir / "eval.jsonl")
    assert len(train) + len(held) == 16 and len(held) == 4
    assert info["balance"]["train"] == ftdata.class_balance(train) and info["balance"]["eval"] == {"real": 2, "fake": 2,
                                                                                                  "fake_per_real": 1.0}
    assert info["cue_scores"] == {"from_assess": 8, "scored_now": 8}
    assert [c["id"] for c in info["cues"]] == CUE_IDS[:3]
    by_id = {c["id"]: c for c in info["cues"]}
    # the ranking stores no threshold: each cue's Youden cut comes from the 8 assess-scored faces beside it
    assert all(c["source"] == "assess scores (8 faces)" for c in info["cues"]) and info["grounding"]["grounded"]
    thr = {c: by_id[c]["threshold"] for c in by_id}
    assert info["rationale"]["enabled"] and info["rationale"]["faces"] == 16  # on by default with an MLLM
    assert info["rationale"]["seconds_per_face"] > 0
    for row in train + held:
        assert (data_dir / row["image"]).is_file()
        assert row["question"] == ftdata.render_question([("stub", "stubbing")], row["experts"])
        head = ftdata.answer_head(row["label"])
        assert row["answer"].startswith(head)
        assert set(row["cue_p_yes"]) == set(CUE_IDS[:3]) and row["grounded"] is True
        p = row["cue_p_yes"]
        # stated: the cues THIS face's P(yes) puts on its label's side of the threshold, farthest first, at most 2
        backed = [c for c in CUE_IDS[:3] if (p[c] > thr[c] if row["label"] else p[c] < thr[c])]
        assert row["cues"] == sorted(backed, key=lambda c: -abs(p[c] - thr[c]))[:2]
        side = "present" if row["label"] else "absent"
        for c in CUE_IDS[:3]:
            assert (by_id[c][side] in row["answer"].lower()) is (c in row["cues"])
        support = ftdata.supporting_experts(row["label"], [("stub", "stubbing")], row["experts"])
        assert row["answer"] == ftdata.render_answer(row["label"], [by_id[c][side] for c in row["cues"]], support,
                                                     row["rationale"])
        score = row["experts"]["stub"]
        agrees = score >= 0.7 if row["label"] else score <= 0.3
        assert row["expert_sentence"] is agrees
        assert ("The stubbing score of" in row["answer"]) is agrees
        if row["path"] in cached:
            assert row["cue_source"] == "assess"
            assert p == {k: v for k, v in cached[row["path"]].items() if k in CUE_IDS[:3]}
        else:
            assert row["cue_source"] == "scored"
    assert (data_dir / "scores.jsonl").is_file()  # cue scores computed here are cached for a rebuild


def test_build_data_only_edit_and_train_from_data_dir(seam_data, selfcontained_llava, tmp_path):
    ranking = _ranking(tmp_path / "mfa")
    out = tmp_path / "run"
    common = ["--model", str(selfcontained_llava), "--no-face-crop", "--no-expert", "--quiet"]
    assert finetune_main([str(seam_data), "--ranking", str(ranking), "--out", str(out), "--build-data-only",
                          "--cue-order", "rank", "--balance", "undersample", "--rationale", "--rationale-tokens", "8",
                          *common]) == 0
    data_dir = out / "data"
    assert not (out / "adapter_config.json").exists()
    info = json.loads((data_dir / "data.json").read_text())
    assert info["rationale"]["enabled"] is True and info["grounding"]["grounded"] is False
    assert (data_dir / "ranking.json").read_bytes() == ranking.read_bytes()
    rows = _rows(data_dir / "train.jsonl")
    assert all(r["cue_source"] == "rank" and r["cues"] == CUE_IDS[:3] and r["grounded"] is False for r in rows)
    edited = dict(rows[0], answer=ftdata.answer_head(rows[0]["label"]) + " Edited by hand.")
    (data_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [edited, *rows[1:]]))
    out2 = tmp_path / "run2"
    assert finetune_main(["--data-dir", str(data_dir), "--out", str(out2), "--max-steps", "2", "--batch-size", "2",
                          "--grad-accum", "2", "--no-eval-before", *common]) == 0
    config = json.loads((out2 / "finetune.config.json").read_text())
    assert config["data"]["fingerprint"] == ftdata.data_fingerprint(data_dir) and config["schedule"]["total_updates"] == 2
    assert config["schedule"]["effective_batch"] == 4 and len(_rows(out2 / "loss.jsonl")) == 2
    assert (out2 / "ranking.json").read_bytes() == ranking.read_bytes()
    wrong = dict(rows[1], answer="This image is " + ("real." if rows[1]["label"] else "fake."))
    (data_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [edited, wrong]))
    with pytest.raises(UsageError, match=r"line 2: the answer must start with"):
        ftdata.load_training_data(data_dir)


def test_rationales_from_the_base_model(seam_data, selfcontained_llava):
    from PIL import Image

    from x2dfd.mllm import MLLMOptions, load_mllm

    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava)))
    faces = [Image.open(p).convert("RGB") for p in sorted(seam_data.rglob("*.png"))[:2]]
    out = ftdata.generate_rationales(mllm, faces, [0, 1], [["both pupils are round"], ["a seam runs along the jaw"]], 6)
    assert len(out) == 2 and all(r is None or isinstance(r, str) for r in out)


# ------------------------------------------------------------------------------------------------ loss masking
@pytest.mark.parametrize("fixture", ["selfcontained_llava", "tiny_llava", "tiny_qwen2vl", "tiny_smolvlm"])
def test_loss_is_on_the_answer_tokens_only(fixture, request, seam_data):
    from PIL import Image

    from x2dfd.mllm import MLLMOptions, load_mllm

    mllm = load_mllm(MLLMOptions(model=str(request.getfixturevalue(fixture))))
    enc = AnswerEncoder(mllm)
    faces = [Image.open(p).convert("RGB") for p in sorted(seam_data.rglob("*.png"))[:2]]
    question = ftdata.render_question([("blend", "blending")], {"blend": 0.873})
    answers = [ftdata.render_answer(0, ["both pupils are round"]),
               ftdata.render_answer(1, ["a seam runs along the jaw", "the skin looks waxy"],
                                    [{"prompt_name": "blending", "score": "0.873"}])]
    samples = [{"image": f, "question": question, "answer": a, "label": y} for f, a, y in zip(faces, answers, (0, 1))]
    batch = enc(samples)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tok = mllm.tokenizer
    for r, (answer, label) in enumerate(zip(answers, (0, 1))):
        trained = (labels[r] != IGNORE).nonzero().flatten()
        start, end = int(trained[0]), int(trained[-1]) + 1
        assert trained.tolist() == list(range(start, end))  # one contiguous span ...
        assert end == int(mask[r].sum())  # ... ending the row (right padding after it, never trained)
        assert (labels[r, end:] == IGNORE).all() and (labels[r, :start] == IGNORE).all()
        assert labels[r, start].item() == (mllm.fake_id if label else mllm.real_id)  # the token explain reads
        assert labels[r, end - 1].item() == tok.eos_token_id
        text = tok.decode(labels[r, start : end - 1])
        assert " ".join(text.split()) == " ".join(answer[len(ANSWER_PREFIX):].split())
        prompt = tok.decode(ids[r, :start], skip_special_tokens=False)
        assert prompt.rstrip().endswith(ANSWER_PREFIX)
    # The loss pushes exactly the logits explain reads: p_fake from the training forward at the position before
    # the verdict token equals MLLM.judge's p_fake on the same face and question.
    with torch.no_grad():
        logits = mllm.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for r in range(2):
        start = int((labels[r] != IGNORE).nonzero()[0])
        pair = logits[r, start - 1, [mllm.real_id, mllm.fake_id]].double()
        p_train = torch.softmax(pair, 0)[1].item()
        [j] = mllm.judge([faces[r]], [question], max_new_tokens=0)
        assert abs(p_train - j.p_fake) < 1e-4


# ------------------------------------------------------------------------------------------------ LoRA scope
@pytest.mark.parametrize("fixture,lm,projector,vision", [
    ("tiny_llava", "model.language_model", "model.multi_modal_projector", "model.vision_tower"),
    ("tiny_qwen2vl", "model.language_model", "model.visual.merger", "model.visual"),
    ("tiny_smolvlm", "model.text_model", "model.connector", "model.vision_model"),
])
def test_lora_only_on_the_language_model(fixture, lm, projector, vision, request):
    ckpt = request.getfixturevalue(fixture)
    cfg = FinetuneConfig(data_dir="unused", model=str(ckpt))
    mllm = load_for_training(cfg, torch.device("cpu"))
    names = [n for n, m in mllm.model.named_modules() if isinstance(m, torch.nn.Linear)]
    if fixture != "tiny_qwen2vl":  # why paths: the plain list of LoRA scripts also hits CLIP/SigLIP attention
        assert any(n.startswith(vision + ".") for n in names if n.endswith(("q_proj", "v_proj")))
    parts = find_parts(mllm.model)
    assert (parts.language_model, parts.projector, parts.vision) == (lm, projector, vision)
    expected = [n for n in names if n.startswith(lm + ".")]
    model = add_lora(mllm.model, cfg, parts)
    adapted = [n.replace("base_model.model.", "", 1) for n in lora_modules(model)]
    assert sorted(adapted) == sorted(expected)  # every linear layer of the language model, nothing else
    assert not any(n.startswith(vision + ".") and "merger" not in n for n in adapted)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(f"{projector}.modules_to_save." in n for n in trainable)
    assert all("lora_" in n or ".modules_to_save." in n for n in trainable)
    import re

    assert re.fullmatch(target_regex(parts), f"{lm}.layers.0.self_attn.q_proj")
    assert not re.fullmatch(target_regex(parts), f"{vision}.encoder.layers.0.self_attn.q_proj")
    with pytest.raises(UsageError, match="Available"):
        target_regex(parts, ["fc1"])


# ------------------------------------------------------------------------------------------------ outputs
def test_outputs_card_and_adapter_use(trained, seam_data, selfcontained_llava, tmp_path):
    out, result = trained["out"], trained["result"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "finetune.config.json",
                 "ranking.json", "metrics.json", "loss.jsonl", "loss.png", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert (out / "ranking.json").read_bytes() == trained["ranking"].read_bytes()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and adapter["lora_dropout"] == 0.05
    assert adapter["modules_to_save"] == ["model.multi_modal_projector"]
    assert adapter["target_modules"].startswith(r"^model\.language_model\.")
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert any("multi_modal_projector" in k for k in keys) and any("lora_A" in k for k in keys)
    assert not any("vision_tower" in k for k in keys)

    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == str(selfcontained_llava) and front["library_name"] == "peft"
    assert {"x2dfd", "deepfake-detection", "lora"} <= set(front["tags"])
    [res] = front["model-index"][0]["results"]
    assert {m["type"] for m in res["metrics"]} == {"roc_auc", "accuracy"}
    assert "x2dfd explain" in text and CUE_IDS[0] in text
    # what the answers are made of: the card's counts are those of the train.jsonl it was trained on
    train = _rows(out / "data" / "train.jsonl")
    n_cues = [len(r["cues"]) for r in train]
    real = [r["answer"] for r in train if r["label"] == 0]
    fake = [r["answer"] for r in train if r["label"] == 1]
    assert (f"- answers: {len(train)}; distinct: {len(set(real + fake))} (real {len(set(real))} of {len(real)}, "
            f"fake {len(set(fake))} of {len(fake)})") in text
    assert (f"- cues stated per answer: mean {sum(n_cues) / len(n_cues):.2f}, min {min(n_cues)}, max {max(n_cues)}"
            in text)
    none = [sum(1 for r, k in zip(train, n_cues) if k == 0 and r["label"] == y) for y in (0, 1)]
    assert f"- answers with no supported cue (verdict without a cue sentence): {none[0]} real, {none[1]} fake" in text
    assert f"- answers with a rationale by the base model: {sum(bool(r['rationale']) for r in train)}" in text
    assert (f"- answers with an expert sentence (expert agrees by X2-DFD's margin): "
            f"{sum(r['expert_sentence'] for r in train)}") in text
    assert "- uninformative cues (AUC CI covers 0.5) among the top cues: 0" in text
    assert "GIVEN the label" in text and "supports on each training face" in text
    assert "grounded in the cues it perceives best" not in text

    config = json.loads((out / "finetune.config.json").read_text())
    assert config["config"]["lora_r"] == 16 and config["lora"]["vision_tower"] == "model.vision_tower"
    assert config["data"]["fingerprint"] == ftdata.data_fingerprint(out / "data")
    assert config["ranking_fingerprint"] == file_sha256(trained["ranking"])
    assert 0 < config["lora"]["trainable"]["percent"] < 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_before"]["n"] == 4 and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["final"] == metrics["epochs"][-1] and result.metrics["final"]["auc"] == metrics["final"]["auc"]
    for ev in [metrics["eval_before"], *metrics["epochs"]]:  # 4 held-out faces: an interval that says how little
        lo, hi = ev["auc_ci95"]
        assert 0.0 <= lo <= ev["auc"] <= hi <= 1.0
        assert f"{ev['auc']:.4f} [{lo:.2f}, {hi:.2f}]" in text
    losses = _rows(out / "loss.jsonl")
    assert [r["step"] for r in losses] == list(range(1, result.steps + 1)) == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["lr"] is not None and r["projector_lr"] is not None for r in losses)
    lrs = [r["lr"] for r in losses]
    assert lrs[0] < lrs[1] == max(lrs) and lrs[-1] < lrs[1]  # warmup, then cosine decay
    assert [r["projector_lr"] / r["lr"] for r in losses[1:]] == pytest.approx([2e-5 / 1e-3] * 5)
    assert len(list_checkpoints(out / "checkpoints")) == 2

    # explain --adapter and assess --adapter read the adapter as users do
    from x2dfd.feature_assessment.assess import main as assess_main
    from x2dfd.explain import main as explain_main

    register_expert("stub", StubExpert, overwrite=True)
    try:
        res_path = tmp_path / "res.jsonl"
        assert explain_main([str(seam_data / "fake"), "--model", str(selfcontained_llava), "--adapter", str(out),
                             "--expert", "stub", "--no-face-crop", "--max-new-tokens", "3", "--out", str(res_path),
                             "--quiet"]) == 0
    finally:
        unregister_expert("stub")
    rows = _rows(res_path)
    assert len(rows) == 8 and all(r["adapter"] == str(out) and r["explanation"].startswith("This image is") for r in rows)
    assert assess_main([str(seam_data), "--model", str(selfcontained_llava), "--adapter", str(out), "--no-face-crop",
                        "--only", CUE_IDS[0], "--bootstrap", "10", "--out", str(tmp_path / "mfa"), "--quiet"]) == 0
    assert json.loads((tmp_path / "mfa" / "ranking.json").read_text())["model"]["adapter"] == str(out)


def test_the_held_out_p_fake_is_explains(trained, selfcontained_llava):
    """finetune's held-out AUC is computed from the same p_fake that `x2dfd explain --adapter` reports."""
    from x2dfd.mllm import MLLMOptions, load_mllm
    from x2dfd.media import load_image

    held = _rows(trained["out"] / "data" / "eval.jsonl")
    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava), adapter=str(trained["out"])))
    js = mllm.judge([load_image(trained["out"] / "data" / r["image"]) for r in held], [r["question"] for r in held], 0)
    from x2dfd.metrics import roc_auc

    auc = roc_auc([r["label"] for r in held], [j.p_fake for j in js])
    assert abs(auc - trained["result"].metrics["final"]["auc"]) < 1e-6


# ------------------------------------------------------------------------------------------------ resume
def test_resume_continues_exactly(seam_data, selfcontained_llava, tmp_path):
    from safetensors.torch import load_file

    ranking = _ranking(tmp_path / "mfa")

    def cfg(out):
        return FinetuneConfig(data=str(seam_data), ranking=str(ranking), model=str(selfcontained_llava), out=str(out),
                              face_crop=False, no_expert=True, cue_order="rank", epochs=2, batch_size=4,
                              eval_fraction=0.25, save_every=1, eval_before=False, quiet=True)

    full = run_finetune(cfg(tmp_path / "full"))

    class Crash(Exception):
        pass

    def crash_at_4(step):
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        run_finetune(cfg(tmp_path / "cut"), on_step=crash_at_4)
    assert [p.name for p in list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-0000003", "step-0000004"]
    with pytest.raises(UsageError, match="--resume"):
        run_finetune(cfg(tmp_path / "cut"))
    c = cfg(tmp_path / "cut")
    c.resume = True
    resumed = run_finetune(c)
    assert resumed.steps == full.steps == 6
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    la, lb = _rows(tmp_path / "full" / "loss.jsonl"), _rows(tmp_path / "cut" / "loss.jsonl")
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=1e-4)
    ckpt = list_checkpoints(tmp_path / "cut" / "checkpoints")[-1]
    assert not any("vision_tower" in k for k in load_file(str(ckpt / "model.safetensors")))  # trainable weights only
    c = cfg(tmp_path / "none")
    c.resume = True
    with pytest.raises(UsageError, match="no checkpoint"):
        run_finetune(c)


# ------------------------------------------------------------------------------------------------ QLoRA
def _qlora_data(tiny_llava, seam_data, tmp_path) -> Path:
    ranking = _ranking(tmp_path / "mfa")
    assert finetune_main([str(seam_data), "--ranking", str(ranking), "--model", str(tiny_llava), "--out",
                          str(tmp_path / "built"), "--no-face-crop", "--no-expert", "--cue-order", "rank",
                          "--eval-fraction", "0.25", "--build-data-only", "--quiet"]) == 0
    return tmp_path / "built" / "data"


def test_qlora_trains_on_cpu(tiny_llava, seam_data, tmp_path):
    from bitsandbytes.nn import Linear4bit

    data_dir = _qlora_data(tiny_llava, seam_data, tmp_path)
    out = tmp_path / "qlora"
    cfg = FinetuneConfig(data_dir=str(data_dir), model=str(tiny_llava), out=str(out), load_in_4bit=True, max_steps=2,
                         batch_size=2, eval_batch_size=4, quiet=True)
    result = run_finetune(cfg)
    assert result.steps == 2 and result.metrics["eval_before"]["n"] == 4 and result.metrics["final"]["n"] == 4
    config = json.loads((out / "finetune.config.json").read_text())
    assert config["quantization"] == "4bit" and "qlora" in (out / "README.md").read_text()
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())  # LoRA really trained
    assert not any(k.endswith(("absmax", "quant_map")) for k in weights)  # the projector was kept unquantized
    mllm = load_for_training(cfg, torch.device("cpu"))
    quantized = {n for n, m in mllm.model.named_modules() if isinstance(m, Linear4bit)}
    assert any(n.startswith("model.language_model.") for n in quantized)
    assert not any("multi_modal_projector" in n or n == "lm_head" for n in quantized)

    from x2dfd.explain import main as explain_main

    res = tmp_path / "res.jsonl"
    assert explain_main([str(seam_data / "real"), "--model", str(tiny_llava), "--adapter", str(out), "--no-face-crop",
                         "--no-expert", "--max-new-tokens", "2", "--out", str(res), "--quiet"]) == 0
    assert all(r["error"] is None for r in _rows(res))


def test_explain_in_4bit_with_a_projector_adapter(tiny_llava, seam_data, tmp_path):
    data_dir = _qlora_data(tiny_llava, seam_data, tmp_path)
    out = tmp_path / "qlora"
    run_finetune(FinetuneConfig(data_dir=str(data_dir), model=str(tiny_llava), out=str(out), load_in_4bit=True,
                                max_steps=1, batch_size=2, eval_before=False, quiet=True))
    from x2dfd.mllm import MLLMOptions, load_mllm

    load_mllm(MLLMOptions(model=str(tiny_llava), adapter=str(out), load_in_4bit=True))


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "x2dfd", "finetune", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    res = _cli(str(tmp_path), "--ranking", str(tmp_path / "nope.json"), "--model", str(tmp_path))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"x2dfd finetune: error: --ranking '{tmp_path / 'nope.json'}' does not exist (run `x2dfd assess DATA --out DIR` "
        "and pass DIR/ranking.json)"]
    res = _cli("--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for flag in ("--ranking", "--out", "--top-k", "--epochs", "--lr", "--projector-lr", "--lora-r", "--lora-alpha",
                 "--lora-dropout", "--load-in-4bit", "--resume", "--build-data-only", "--data-dir", "--no-expert",
                 "--balance", "--eval-fraction", "--gradient-checkpointing", "--max-steps"):
        assert flag in text, flag
    assert "default: 0.0002" in text and "default: 2e-05" in text
    assert "--adapter" not in text
    for argv, message in (([str(tmp_path)], "--ranking"),
                          (["--data-dir", str(tmp_path), "--lora-r", "0"], "--lora-r must be >= 1"),
                          ([str(tmp_path), "--data-dir", str(tmp_path)], "exclude each other")):
        with pytest.raises(SystemExit) as exc:
            finetune_main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1
    with pytest.raises(UsageError, match=r"--ranking '.*nope.json' does not exist .*x2dfd assess"):
        finetune_main([str(tmp_path), "--ranking", str(tmp_path / "nope.json"), "--model", str(tmp_path)])
    with pytest.raises(UsageError, match="has no train.jsonl"):
        finetune_main(["--data-dir", str(tmp_path), "--model", str(tmp_path)])


@pytest.mark.slow
def test_accelerate_launch_two_processes(trained, selfcontained_llava, tmp_path):
    """Data parallel through `accelerate launch` (2 CPU processes, gloo): same command, no code of our own."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "x2dfd", "finetune", "--data-dir",
           str(trained["out"] / "data"), "--model", str(selfcontained_llava), "--out", str(out), "--batch-size", "2",
           "--no-gradient-checkpointing", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads((out / "finetune.config.json").read_text())
    assert config["processes"] == 2 and config["schedule"]["effective_batch"] == 4
    assert config["schedule"]["total_updates"] == 3  # 12 samples / (2 per process x 2 processes)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["n"] == 4  # every held-out face scored once, across both processes
