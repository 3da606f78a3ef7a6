"""`x2dfd finetune --top-k 0`: Weak Feature Supplementing alone. No --ranking needed (a given one is ignored, with a
note), no cue sentence in any answer, the expert sentence where the expert agrees; the data, the model card, the
config, the adapter's preset.json, --data-dir and --resume runs and `explain --adapter` work without a ranking. The
refusals for --top-k >= 1 (all cues inverted/constant, uninformative cues) are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.stubs import brightness_expert, registered
from x2dfd.errors import UsageError
from x2dfd.feature_assessment.cues import load_cues
from x2dfd.finetune import data as ftdata
from x2dfd.finetune.card import answer_lines
from x2dfd.finetune.config import FinetuneConfig, parse_args
from x2dfd.finetune.synthetic import make_seam_dataset
from x2dfd.finetune.train import main as finetune_main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CUES = ["boundary.jawline_seam", "skin_texture.no_pores", "eyes.pupil_shape"]
Bright = brightness_expert("bright", "brightness")
# Brightness of each face, set so the stub expert (p_fake = mean brightness) agrees with the label by X2-DFD's
# margin for some faces (real dark <= 0.30, fake bright >= 0.70) and not for others (mid, or the wrong side).
LEVELS = {0: ["dark", "dark", "mid", "bright"], 1: ["bright", "bright", "mid", "dark"]}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ranking(folder: Path, flag: str | None = None) -> Path:
    bank = load_cues(only=CUES).by_id()
    rows = [{"id": c, "region": bank[c].region, "question": bank[c].question, "present": bank[c].present,
             "absent": bank[c].absent, "rank": i + 1, "auc": 0.9 - 0.1 * i, "auc_ci": [0.4, 0.95], "threshold": 0.5,
             "flags": [flag] if flag else []} for i, c in enumerate(CUES)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ranking.json").write_text(json.dumps({"model": {"model": "base"}, "setting": {"id": "s"},
                                                     "scores_path": "scores.jsonl", "cues": rows}))
    return folder / "ranking.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("topk0") / "data"
    shift = {"dark": 10.0, "mid": 100.0, "bright": 200.0}  # 0.2 x texture + shift: means ~0.2, ~0.5, ~0.85
    for path, label in make_seam_dataset(root, 4, 4, size=32, seed=5):
        level = LEVELS[label][int(path.stem.split("_")[-1])]
        img = np.asarray(Image.open(path), np.float32) * 0.2 + shift[level]
        Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8)).save(path)
    return root


def _expected(row: dict) -> str:
    """verdict, then the rationale (if the base model finished a sentence), then the expert sentence if it agrees."""
    label, score = row["label"], row["experts"]["bright"]
    answer = ftdata.answer_head(label) + (f" {row['rationale']}" if row["rationale"] else "")
    if (label == 1 and score >= 0.70) or (label == 0 and score <= 0.30):
        word, what = ("high", "a forged face") if label else ("low", "an unaltered face")
        answer += f" The brightness score of {score:.3f} is {word}, which also points to {what}."
    return answer


def test_top_k_0_trains_on_the_expert_alone(data, selfcontained_llava, tmp_path, capsys):
    out = tmp_path / "wfs"
    common = ["--model", str(selfcontained_llava), "--no-face-crop", "--batch-size", "4", "--quiet"]
    with registered(Bright):
        assert finetune_main([str(data), "--top-k", "0", "--expert", "bright", "--out", str(out), "--max-steps", "1",
                              "--eval-fraction", "0.25", "--rationale-tokens", "4", *common]) == 0
    assert "--ranking" not in capsys.readouterr().err  # no ranking given: nothing to say about one

    # the data: no cue anywhere, the expert sentence exactly where the stub agrees, no ranking behind it
    info = json.loads((out / "data" / "data.json").read_text())
    assert info["weak_only"] is True and info["top_k"] == 0 and info["ranking"] is None and info["cues"] == []
    assert info["grounding"]["grounded"] is None and "--top-k 0" in info["grounding"]["rule"]
    assert info["rationale"]["enabled"] is True and info["rationale"]["faces"] == 8
    assert info["cue_scores"] == {"from_assess": 0, "scored_now": 0}
    assert not (out / "data" / "ranking.json").exists() and not (out / "data" / "scores.jsonl").exists()
    rows = _rows(out / "data" / "train.jsonl") + _rows(out / "data" / "eval.jsonl")
    assert len(rows) == 8
    bank = load_cues(only=CUES).by_id()
    for row in rows:
        assert row["cues"] == [] and row["cue_p_yes"] == {} and row["cue_source"] == "none"
        assert row["answer"] == _expected(row), row
        assert not any(p in row["answer"].lower() for c in bank.values() for p in (c.present.lower(), c.absent.lower()))
        assert "the brightness score is" in row["question"]
    stated = {(r["label"], LEVELS[r["label"]][int(Path(r["path"]).stem.split("_")[-1])]): r["expert_sentence"]
              for r in rows}
    assert stated == {(0, "dark"): True, (0, "mid"): False, (0, "bright"): False,
                      (1, "bright"): True, (1, "mid"): False, (1, "dark"): False}

    # the outputs: no ranking.json, a null ranking and fingerprint, the expert recorded, a card that says so
    assert not (out / "ranking.json").exists()
    config = json.loads((out / "finetune.config.json").read_text())
    assert config["ranking"] is None and config["ranking_fingerprint"] is None
    assert config["data"]["weak_only"] is True and config["data"]["cues"] == []
    preset = json.loads((out / "preset.json").read_text())
    assert [e["name"] for e in preset["experts"]] == ["bright"] and preset["recorded_by"]["command"] == "x2dfd finetune"
    card = (out / "README.md").read_text()
    assert "Weak Feature Supplementing only (`--top-k 0`): the answers carry no cues" in card
    assert "- cues: none (`--top-k 0`" in card and "| rank | cue |" not in card
    assert "no `ranking.json`" in card and "- cues stated per answer: none (`--top-k 0`)" in card
    assert "Strong Feature Strengthening)" not in card and "uninformative cues" not in card
    assert f"were written by the base model {ftdata.RATIONALE_CAVEAT[True]}." in card
    assert "GIVEN the label (and no cue: --top-k 0)" in card

    # explain with the adapter: the recorded expert by default
    res = tmp_path / "res.jsonl"
    from x2dfd.explain import main as explain_main

    with registered(Bright):
        assert explain_main([str(data / "fake"), "--model", str(selfcontained_llava), "--adapter", str(out),
                             "--no-face-crop", "--max-new-tokens", "3", "--out", str(res), "--quiet"]) == 0
    explained = _rows(res)
    assert len(explained) == 4 and all(r["explanation"].startswith("This image is") for r in explained)
    assert all(list(r["experts"]) == ["bright"] for r in explained)

    # --resume (same options, no --ranking) goes on from the checkpoint; --data-dir trains from the built data
    with registered(Bright):
        assert finetune_main([str(data), "--top-k", "0", "--expert", "bright", "--out", str(out), "--max-steps", "2",
                              "--eval-fraction", "0.25", "--resume", "--no-eval-before", *common]) == 0
    assert [r["step"] for r in _rows(out / "loss.jsonl")] == [1, 2]
    assert json.loads((out / "finetune.config.json").read_text())["ranking_fingerprint"] is None
    out2 = tmp_path / "from-data-dir"
    out2.mkdir()
    (out2 / "ranking.json").write_text("{}")  # an earlier run's: not this adapter's, removed
    assert finetune_main(["--data-dir", str(out / "data"), "--out", str(out2), "--max-steps", "1", "--no-eval-before",
                          *common]) == 0
    config = json.loads((out2 / "finetune.config.json").read_text())
    assert config["ranking"] is None and config["ranking_fingerprint"] is None and not (out2 / "ranking.json").exists()
    assert [e["name"] for e in json.loads((out2 / "preset.json").read_text())["experts"]] == ["bright"]
    assert "Weak Feature Supplementing only" in (out2 / "README.md").read_text()


def test_top_k_0_ignores_a_ranking_whose_cues_are_all_inverted(data, tmp_path, capsys, monkeypatch):
    ranking = _ranking(tmp_path / "mfa", flag="inverted")
    # --top-k >= 1: refused as before, before any model is loaded
    with pytest.raises(UsageError, match="^--ranking: every cue is flagged inverted or constant") as err:
        finetune_main([str(data), "--ranking", str(ranking), "--no-face-crop", "--no-expert", "--build-data-only",
                       "--out", str(tmp_path / "refused"), "--quiet"])
    assert "\n" not in str(err.value) and "--top-k 0" in str(err.value)
    import x2dfd.mllm

    def never(*_a, **_k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(x2dfd.mllm, "load_mllm", never)  # --no-rationale, no cue to score: no model needed
    capsys.readouterr()
    with registered(Bright):
        assert finetune_main([str(data), "--ranking", str(ranking), "--top-k", "0", "--expert", "bright",
                              "--no-face-crop", "--no-rationale", "--eval-fraction", "0", "--build-data-only",
                              "--out", str(tmp_path / "wfs"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"x2dfd finetune: --top-k 0 states no cue, so --ranking '{ranking}' is ignored (not read, copied "
                   "or fingerprinted)"]
    built = tmp_path / "wfs" / "data"
    info = json.loads((built / "data.json").read_text())
    assert info["ranking"] is None and info["cues"] == [] and not (built / "ranking.json").exists()
    rows = _rows(built / "train.jsonl")
    assert len(rows) == 8 and all(r["answer"] == _expected(r) and r["rationale"] is None for r in rows)
    assert sum(r["expert_sentence"] for r in rows) == 4


def test_uninformative_refusal_is_unchanged_for_top_k_1(data, tmp_path):
    ranking = _ranking(tmp_path / "mfa", flag="uninformative")
    with pytest.raises(UsageError, match="^3 of the top-3 cues are uninformative .*--allow-uninformative"):
        finetune_main([str(data), "--ranking", str(ranking), "--top-k", "3", "--no-face-crop", "--no-expert",
                       "--build-data-only", "--out", str(tmp_path / "refused"), "--quiet"])
    cfg = FinetuneConfig(data=str(data), ranking=str(ranking), top_k=0, face_crop=False, no_expert=True,
                         eval_fraction=0.0, quiet=True)
    assert ftdata.check_cues(ftdata.load_ranking(ranking)[0], cfg) == []  # --top-k 0 looks at no cue


def test_top_k_0_with_no_expert_is_plain_verdict_finetuning(data, tmp_path, capsys):
    cfg = FinetuneConfig(data=str(data), top_k=0, face_crop=False, no_expert=True, eval_fraction=0.0, quiet=True)
    info = ftdata.DataBuilder(cfg, lambda: [], get_mllm=None).build(tmp_path / "built")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--top-k 0 with --no-expert" in err[0] and "plain verdict fine-tuning" in err[0]
    rows = _rows(tmp_path / "built" / "train.jsonl")
    assert [r["answer"] for r in rows] == [ftdata.answer_head(r["label"]) for r in rows]
    text = "\n".join(answer_lines(rows, info))
    assert "Weak Feature Supplementing only (`--top-k 0`): the answers carry no cues" in text
    assert "- answers with an expert sentence (expert agrees by X2-DFD's margin): 0" in text


def test_top_k_options_and_help():
    with pytest.raises(UsageError, match=r"^--top-k must be >= 0 \(0: no cue in any answer\), got -1$"):
        FinetuneConfig(data="d", top_k=-1)
    with pytest.raises(UsageError, match="needs --ranking .* or --top-k 0"):
        FinetuneConfig(data="d")
    assert FinetuneConfig(data="d", top_k=0).ranking is None
    with pytest.raises(UsageError, match="--cues-per-answer must be >= 1"):
        FinetuneConfig(data="d", top_k=0, cues_per_answer=0)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(out.getvalue().split())
    assert "0: Weak Feature Supplementing alone, no --ranking needed" in text and "plain verdict fine-tuning" in text


def test_top_k_0_rationale_is_asked_with_the_label_alone(data, tmp_path, monkeypatch):
    from x2dfd.prompts import render_template

    assert render_template(ftdata.RATIONALE_TEMPLATE, label="fake", cues=[]) == (
        "This face image is known to be fake. In two sentences, explain how the visual evidence in the face shows "
        "that the image is fake.")  # no "Visible evidence:" sentence, no stray space
    asked = []

    def fake_generate(mllm, images, labels, phrases, max_new_tokens):
        asked.extend(phrases)
        return ["The texture gives it away." for _ in labels]

    monkeypatch.setattr(ftdata, "generate_rationales", fake_generate)
    cfg = FinetuneConfig(data=str(data), top_k=0, expert=["bright"], face_crop=False, eval_fraction=0.0, quiet=True)
    with registered(Bright):
        from x2dfd.api import load_experts

        info = ftdata.DataBuilder(cfg, lambda: load_experts(["bright"], "cpu"), get_mllm=lambda: "mllm").build(
            tmp_path / "built")
    rows = _rows(tmp_path / "built" / "train.jsonl")
    assert len(asked) == 8 and all(ph == [] for ph in asked)
    assert all(r["rationale"] == "The texture gives it away." and r["answer"] == _expected(r) for r in rows)
    assert sum(r["answer"].endswith("face.") for r in rows) == 4  # the expert sentence follows the rationale
    assert info["rationale"]["caveat"] == "written by the base MLLM " + ftdata.RATIONALE_CAVEAT[True]
    assert "and no cue: --top-k 0" in info["rationale"]["caveat"]
