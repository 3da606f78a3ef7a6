"""`x2dfd finetune`'s answers are grounded: a cue is stated for a face only where that face's base-model P(yes)
is on its label's side of the cue's threshold; uninformative cues are refused by count; rationales are on by
default (cost recorded); the model card's counts are train.jsonl's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from x2dfd.errors import UsageError
from x2dfd.feature_assessment.cache import ScoreStore
from x2dfd.feature_assessment.cues import load_cues
from x2dfd.feature_assessment.ranking import cue_metrics, youden_threshold
from x2dfd.finetune import data as ftdata
from x2dfd.finetune.card import answer_lines
from x2dfd.finetune.config import FinetuneConfig, parse_args
from x2dfd.finetune.synthetic import make_seam_dataset
from x2dfd.finetune.train import main as finetune_main
from x2dfd.media import file_sha256

CUES = ["boundary.jawline_seam", "skin_texture.no_pores", "eyes.pupil_shape"]
THRESHOLDS = {"boundary.jawline_seam": 0.5, "skin_texture.no_pores": 0.3, "eyes.pupil_shape": 0.7}


def _ranking(folder: Path, flags: dict[str, list[str]] | None = None, thresholds: dict | None = THRESHOLDS) -> Path:
    bank = load_cues(only=CUES).by_id()
    rows = []
    for i, c in enumerate(CUES):
        row = {"id": c, "region": bank[c].region, "question": bank[c].question, "present": bank[c].present,
               "absent": bank[c].absent, "rank": i + 1, "auc": 0.9 - 0.1 * i, "auc_ci": [0.8 - 0.2 * i, 0.95],
               "flags": (flags or {}).get(c, [])}
        if thresholds:
            row["threshold"] = thresholds[c]
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ranking.json").write_text(json.dumps({"model": {"model": "base"}, "setting": {"id": "s"},
                                                     "scores_path": "scores.jsonl", "cues": rows}))
    return folder / "ranking.json"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[tuple[Path, int]]:
    return make_seam_dataset(tmp_path_factory.mktemp("g") / "data", 4, 4, size=32, seed=7)


def _scores(ranking: Path, faces, p_of) -> dict[str, dict[str, float]]:
    """assess scores beside the ranking: ``p_of(i, label) -> {cue: P(yes)}`` for the i-th face."""
    store = ScoreStore(ranking.parent / "scores.jsonl")
    out = {}
    for i, (path, label) in enumerate(faces):
        p = p_of(i, label)
        store.add_scores("s", file_sha256(path), p, path=str(path), label=label)
        out[str(Path(path).resolve())] = p
    store.close()
    return out


def _build(tmp_path, data, ranking, **kw):
    cfg = FinetuneConfig(data=str(data), ranking=str(ranking), face_crop=False, no_expert=True, eval_fraction=0.0,
                         quiet=True, **kw)
    info = ftdata.DataBuilder(cfg, lambda: [], get_mllm=None).build(tmp_path / "built")
    return info, [json.loads(x) for x in (tmp_path / "built" / "train.jsonl").read_text().splitlines()]


def test_youden_threshold_is_stored_per_cue():
    y = np.array([0, 0, 0, 1, 1, 1])
    thr, j = youden_threshold(y, np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8]))
    assert j == 1.0 and thr == pytest.approx(0.45)  # halfway between the highest real and the lowest fake
    p = np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.9])
    thr, _ = youden_threshold(y, p)
    assert ((p > thr) == (y == 1)).sum() == 5  # the best cut: one real (0.6) on the fake side
    assert cue_metrics(y, p, n_boot=20)["threshold"] == pytest.approx(thr)


def test_a_cue_is_stated_only_where_the_face_supports_it(faces, tmp_path, capsys):
    ranking = _ranking(tmp_path / "mfa")
    data = faces[0][0].parent.parent

    def p_of(i, label):
        if label == 1 and i == 4:  # a fake on the REAL side of every threshold: no cue stated at all
            return {"boundary.jawline_seam": 0.1, "skin_texture.no_pores": 0.1, "eyes.pupil_shape": 0.1}
        if label == 1:  # jawline 0.9 > 0.5 (stated), no_pores 0.2 < 0.3 (omitted), pupil exactly 0.7 (omitted)
            return {"boundary.jawline_seam": 0.9, "skin_texture.no_pores": 0.2, "eyes.pupil_shape": 0.7}
        if i == 0:  # a real on the FAKE side of every threshold: no cue stated
            return {"boundary.jawline_seam": 0.9, "skin_texture.no_pores": 0.9, "eyes.pupil_shape": 0.9}
        # real: jawline 0.45 < 0.5 (stated, margin 0.05), no_pores 0.5 > 0.3 (omitted), pupil 0.1 < 0.7 (margin 0.6)
        return {"boundary.jawline_seam": 0.45, "skin_texture.no_pores": 0.5, "eyes.pupil_shape": 0.1}

    scores = _scores(ranking, faces, p_of)
    info, rows = _build(tmp_path, data, ranking, cues_per_answer=3)
    bank = load_cues(only=CUES).by_id()
    assert info["cue_scores"] == {"from_assess": 8, "scored_now": 0}
    assert info["grounding"]["grounded"] is True
    assert {c["id"]: (c["threshold"], c["source"]) for c in info["cues"]} == {c: (t, "ranking") for c, t in THRESHOLDS.items()}
    assert info["rationale"] == {"enabled": False, "reason": "no MLLM loaded"}
    assert len(rows) == 8
    for row in rows:
        p = scores[row["path"]]
        if p["boundary.jawline_seam"] == 0.1 or (row["label"] == 0 and p["boundary.jawline_seam"] == 0.9):
            assert row["cues"] == [] and row["answer"] == ftdata.answer_head(row["label"])  # no template claim
        elif row["label"] == 1:
            assert row["cues"] == ["boundary.jawline_seam"]
            assert row["answer"] == f"This image is fake. {bank['boundary.jawline_seam'].present.capitalize()}."
            assert bank["skin_texture.no_pores"].present not in row["answer"]
        else:
            assert row["cues"] == ["eyes.pupil_shape", "boundary.jawline_seam"]  # farthest past its threshold first
        assert row["grounded"] is True and row["rationale"] is None
    comp = info["answers"]["train"]
    assert comp["no_cue"] == {"real": 1, "fake": 1} and comp["answers"] == 8 and comp["distinct"] == 4
    assert comp["cues_per_answer"] == {"mean": 1.125, "min": 0, "max": 2}  # (3 x 2 + 3 x 1) / 8
    assert capsys.readouterr().err == ""  # thresholds from the ranking, no uninformative cue: nothing to warn about


def test_thresholds_without_a_stored_one(faces, tmp_path, capsys):
    """An older ranking: the cut is computed from the assess scores beside it; with none, 0.5 and a warning."""
    ranking = _ranking(tmp_path / "mfa", thresholds=None)
    _scores(ranking, faces, lambda i, y: {c: 0.2 + 0.6 * y + 0.01 * i for c in CUES})
    ranking_data, _ = ftdata.load_ranking(ranking)
    from x2dfd.feature_assessment.cache import read_scores

    thr = ftdata.cue_thresholds(ftdata.strong_cues(ranking_data, 3), read_scores(ranking.parent, "s"))
    assert all(v["source"] == "assess scores (8 faces)" and 0.23 < v["threshold"] < 0.84 for v in thr.values())
    bare = _ranking(tmp_path / "bare", thresholds=None)
    builder = ftdata.DataBuilder(FinetuneConfig(data="d", ranking=str(bare)), lambda: [], get_mllm=None)
    assert {v["threshold"] for v in builder.thresholds.values()} == {0.5}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stores no decision threshold for 3 cue(s)" in err[0]


def test_rank_order_says_not_grounded_once(faces, tmp_path, capsys):
    ranking = _ranking(tmp_path / "mfa")
    info, rows = _build(tmp_path, faces[0][0].parent.parent, ranking, cue_order="rank", cues_per_answer=2)
    assert info["grounding"]["grounded"] is False and "not grounded" in info["grounding"]["rule"]
    assert all(r["cues"] == CUES[:2] and r["grounded"] is False for r in rows)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOT grounded" in err[0]


def test_uninformative_cues_are_refused_by_count_unless_allowed(faces, tmp_path, capsys, monkeypatch):
    flags = {"skin_texture.no_pores": ["uninformative"], "eyes.pupil_shape": ["uninformative", "always_no"]}
    ranking = _ranking(tmp_path / "mfa", flags=flags)
    data = faces[0][0].parent.parent
    with pytest.raises(UsageError) as err:
        finetune_main([str(data), "--ranking", str(ranking), "--top-k", "3", "--no-face-crop", "--no-expert",
                       "--build-data-only", "--out", str(tmp_path / "refused"), "--quiet"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("2 of the top-3 cues are uninformative (AUC CI covers 0.5): "
                                                      "skin_texture.no_pores (AUC 0.80, CI 0.60-0.95), eyes.pupil_shape")
    assert "--allow-uninformative" in message
    assert not (tmp_path / "refused" / "data" / "train.jsonl").exists()
    # refused before any model is loaded (check_inputs, on every process of an accelerate launch), in training too
    import x2dfd.mllm

    def never(*_a, **_k):
        raise AssertionError("a model was loaded before the cue check")

    monkeypatch.setattr(x2dfd.mllm, "load_mllm", never)
    with pytest.raises(UsageError, match="^2 of the top-3 cues are uninformative"):
        finetune_main([str(data), "--ranking", str(ranking), "--top-k", "3", "--no-face-crop", "--no-expert",
                       "--out", str(tmp_path / "refused2"), "--quiet"])
    monkeypatch.undo()
    # --top-k 1 keeps only the informative cue: no refusal
    assert ftdata.uninformative_message(ftdata.strong_cues(ftdata.load_ranking(ranking)[0], 1)) is None

    _scores(ranking, faces, lambda i, y: {c: 0.9 if y else 0.1 for c in CUES})
    capsys.readouterr()
    info, _ = _build(tmp_path, data, ranking, allow_uninformative=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("x2dfd finetune: 2 of the top-3 cues are uninformative (AUC CI covers "
                                               "0.5)") and "--allow-uninformative" in err[0]
    assert info["uninformative_cues"]["ids"] == ["skin_texture.no_pores", "eyes.pupil_shape"]
    assert info["uninformative_cues"]["allowed"] is True
    text = "\n".join(answer_lines([json.loads(x) for x in (tmp_path / "built" / "train.jsonl").read_text().splitlines()],
                                  info))
    assert "uninformative cues (AUC CI covers 0.5) among the top cues: 2 (`skin_texture.no_pores`" in text


def test_rationale_is_on_by_default_with_an_mllm(faces, selfcontained_llava, tmp_path, capsys):
    assert FinetuneConfig(data_dir="x").rationale is True
    assert parse_args(["--data-dir", "x", "--no-rationale"]).rationale is False
    ranking = _ranking(tmp_path / "mfa")
    _scores(ranking, faces, lambda i, y: {c: 0.9 if y else 0.1 for c in CUES})
    data = faces[0][0].parent.parent
    common = [str(data), "--ranking", str(ranking), "--model", str(selfcontained_llava), "--no-face-crop",
              "--no-expert", "--build-data-only", "--rationale-tokens", "4", "--eval-fraction", "0"]
    assert finetune_main([*common, "--out", str(tmp_path / "on")]) == 0
    err = capsys.readouterr().err
    info = json.loads((tmp_path / "on" / "data" / "data.json").read_text())
    r = info["rationale"]
    assert r["enabled"] is True and r["faces"] == 8 and r["max_new_tokens"] == 4 and r["label_conditioned"] is True
    assert r["seconds_per_face"] == pytest.approx(r["seconds"] / 8, abs=1e-3) and r["seconds_per_face"] > 0
    assert r["written"] == info["answers"]["train"]["with_rationale"]  # eval-fraction 0: every face is in train
    assert f"rationales by the base model: {r['seconds_per_face']:.3f} s per face (8 faces" in err
    assert "answers (train): 8 answers" in err
    rows = [json.loads(x) for x in (tmp_path / "on" / "data" / "train.jsonl").read_text().splitlines()]
    for row in rows:  # the rationale, when the tiny model finished a sentence, follows the cue sentence
        assert "rationale" in row and (row["rationale"] is None or row["answer"].endswith(row["rationale"]))

    assert finetune_main([*common, "--out", str(tmp_path / "off"), "--no-rationale", "--quiet"]) == 0
    info = json.loads((tmp_path / "off" / "data" / "data.json").read_text())
    assert info["rationale"] == {"enabled": False, "reason": "--no-rationale"}
    rows = [json.loads(x) for x in (tmp_path / "off" / "data" / "train.jsonl").read_text().splitlines()]
    assert all(r["rationale"] is None for r in rows) and info["answers"]["train"]["with_rationale"] == 0


def test_help_states_the_rationale_caveat():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(out.getvalue().split())
    assert "--rationale, --no-rationale" in text and "label-conditioned" in text and "--allow-uninformative" in text
    assert "Label conditioning of the rationale" in ftdata.__doc__


def test_rationales_enter_answers_and_counts(faces, tmp_path, monkeypatch):
    """The generated rationale follows the cue sentence; data.json and the card count the answers that have one."""
    ranking = _ranking(tmp_path / "mfa")
    _scores(ranking, faces, lambda i, y: {c: 0.9 if y else 0.1 for c in CUES})
    asked = []

    def fake_generate(mllm, images, labels, phrases, max_new_tokens):
        asked.extend(zip(labels, phrases))
        return ["The seam gives it away." if y else None for y in labels]

    monkeypatch.setattr(ftdata, "generate_rationales", fake_generate)
    cfg = FinetuneConfig(data=str(faces[0][0].parent.parent), ranking=str(ranking), face_crop=False, no_expert=True,
                         eval_fraction=0.0, cues_per_answer=1, quiet=True)
    info = ftdata.DataBuilder(cfg, lambda: [], get_mllm=lambda: "mllm").build(tmp_path / "built")
    rows = [json.loads(x) for x in (tmp_path / "built" / "train.jsonl").read_text().splitlines()]
    assert len(asked) == 8 and all(len(ph) == 1 for _, ph in asked)  # asked with the face's stated cues
    for r in rows:
        assert (r["rationale"] == "The seam gives it away.") is (r["label"] == 1)
        assert r["answer"].endswith(". The seam gives it away.") is (r["label"] == 1)
    assert info["rationale"]["written"] == 4 == info["answers"]["train"]["with_rationale"]
    text = "\n".join(answer_lines(rows, info))
    assert "- answers with a rationale by the base model: 4" in text and "GIVEN the label" in text
    caveat = ftdata.RATIONALE_CAVEAT[False]  # one wording: data.json's caveat and the card's sentence
    assert info["rationale"]["caveat"] == f"written by the base MLLM {caveat}"
    assert f"were written by the base model {caveat}." in text and "GIVEN the label and the stated cues" in caveat
