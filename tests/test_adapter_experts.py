"""Experts pluggable everywhere: `--expert NAME[=WEIGHTS]` means the same in finetune, explain, the API and
`x2dfd expert score`; the adapter folder records the experts it was trained with (preset.json) and inference uses
them by default; other experts, or recorded weights that are gone or changed, are one-line errors unless
--allow-expert-mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from x2dfd.errors import UsageError
from x2dfd.experts.blend import DEFAULT_WEIGHTS
from x2dfd.media import file_sha256

REPO = Path(__file__).resolve().parents[1]
SHIPPED = DEFAULT_WEIGHTS
CUE_IDS = ["boundary.jawline_seam", "skin_texture.no_pores", "eyes.pupil_shape"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _ranking(folder: Path) -> Path:
    from x2dfd.feature_assessment.cues import load_cues

    bank = load_cues(only=CUE_IDS).by_id()
    rows = [{"id": c, "region": bank[c].region, "question": bank[c].question, "present": bank[c].present,
             "absent": bank[c].absent, "rank": i + 1, "auc": round(0.9 - 0.05 * i, 3), "flags": []}
            for i, c in enumerate(CUE_IDS)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ranking.json").write_text(json.dumps({"command": "assess", "model": {"model": "base"},
                                                     "setting": {"id": "s"}, "scores_path": "scores.jsonl",
                                                     "cues": rows}))
    return folder / "ranking.json"


def _own_blend_weights(folder: Path) -> Path:
    """Blend weights of our own: the shipped ones with the classifier bias moved (another file, another sha256)."""
    from x2dfd.experts import load_expert

    expert = load_expert("blend")
    with torch.no_grad():  # every network's classifier bias (the shipped expert is an ensemble)
        for name, param in expert.model.named_parameters():
            if name.endswith("cls_head.1.bias"):
                param += 0.25
    return expert.save(folder / "blend_own.safetensors")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finetune_cfg(data: Path, ranking: Path, model: Path, out: Path, **kw):
    from x2dfd.finetune.config import FinetuneConfig

    return FinetuneConfig(data=None if data is None else str(data), ranking=str(ranking), model=str(model), out=str(out), face_crop=False,
                          max_steps=1, batch_size=4, eval_fraction=0.25, top_k=3, cues_per_answer=2,
                          cue_order="rank", rationale=False, eval_before=False, quiet=True, **kw)


@pytest.fixture(scope="module")
def adapter(selfcontained_llava, tmp_path_factory):
    """One optimizer step of `x2dfd finetune --expert blend=OWN_WEIGHTS` on 8 synthetic faces."""
    from x2dfd.finetune.synthetic import make_seam_dataset
    from x2dfd.finetune.train import run_finetune

    root = tmp_path_factory.mktemp("adapter_experts")
    make_seam_dataset(root / "data", 4, 4, size=48, seed=3)
    weights = _own_blend_weights(root / "weights")
    ranking = _ranking(root / "mfa")
    out = root / "run"
    run_finetune(_finetune_cfg(root / "data", ranking, selfcontained_llava, out, expert=[f"blend={weights}"]))
    return {"out": out, "weights": weights, "data": root / "data", "ranking": ranking, "root": root}


def _explain(args: list[str], capsys) -> tuple[int, str]:
    from x2dfd.cli import main as cli_main

    code = cli_main(["explain", *args])
    return code, capsys.readouterr().err.strip()


def test_adapter_folder_records_the_experts(adapter, selfcontained_llava):
    from x2dfd.pipeline import QUESTION_TEMPLATE
    from x2dfd.prompts import template_version
    from x2dfd.presets import read_preset_file

    out, weights = adapter["out"], adapter["weights"]
    preset = json.loads((out / "preset.json").read_text())
    assert preset["name"] == "x2dfd" and preset["recorded_by"]["command"] == "x2dfd finetune"
    assert preset["experts"] == [{"name": "blend", "word": "blending", "weights": str(weights.resolve()),
                                  "weights_file": str(weights.resolve()), "sha256": file_sha256(weights),
                                  "shipped": False}]
    assert file_sha256(weights) != file_sha256(SHIPPED)
    assert preset["template_version"] == template_version(QUESTION_TEMPLATE)
    assert preset["checkpoint"] == str(selfcontained_llava.resolve())
    assert read_preset_file(out / "preset.json").expert_specs() == [f"blend={weights.resolve()}"]
    # the same record in the data folder (a --data-dir run reads it) and in finetune.config.json
    assert json.loads((out / "data" / "preset.json").read_text())["experts"] == preset["experts"]
    assert json.loads((out / "finetune.config.json").read_text())["experts"] == preset["experts"]
    assert "blending score is" in _rows(out / "data" / "train.jsonl")[0]["question"]


def test_explain_uses_the_recorded_experts(adapter, selfcontained_llava, tmp_path, capsys):
    from x2dfd.explain import ExplainConfig, build_explainer

    out, weights, data = adapter["out"], adapter["weights"], adapter["data"]
    res = tmp_path / "res.jsonl"
    code, err = _explain([str(data / "fake"), "--model", str(selfcontained_llava), "--adapter", str(out),
                          "--no-face-crop", "--max-new-tokens", "0", "--out", str(res), "--quiet"], capsys)
    assert code == 0, err
    conf = json.loads(res.with_suffix(".config.json").read_text())
    [used] = conf["experts"]
    assert used["name"] == "blend" and used["sha256"] == file_sha256(weights)
    assert conf["adapter_experts"]["status"] == "match"
    rows = _rows(res)
    assert rows and all(list(r["experts"]) == ["blend"] for r in rows)
    # the question explain asks is the training question, word for word
    train_row = _rows(out / "data" / "train.jsonl")[0]
    explainer = build_explainer(ExplainConfig(inputs=["x"], model=str(selfcontained_llava), adapter=str(out),
                                              face_crop=False, max_new_tokens=0))
    assert explainer.question(train_row["experts"]) == train_row["question"]
    assert explainer.template_version == json.loads((out / "preset.json").read_text())["template_version"]
    # the run's identity holds the experts it resolved: resuming it with the recorded experts spelled out is the
    # same run (not "other settings"), and a shipped-weights blend is another one
    assert conf["config"]["experts_resolved"] == [f"blend={weights.resolve()}"]
    more = [str(data / "real"), "--model", str(selfcontained_llava), "--adapter", str(out), "--no-face-crop",
            "--max-new-tokens", "0", "--out", str(res), "--quiet"]
    code, err = _explain([*more, "--expert", f"blend={weights.resolve()}"], capsys)
    assert code == 0, err
    assert len(_rows(res)) == len(rows) + len(list((data / "real").iterdir()))
    code, err = _explain([*more, "--expert", "blend", "--allow-expert-mismatch"], capsys)
    assert code == 2 and "holds a run with other settings (experts: " in err.splitlines()[-1]


def test_other_experts_are_one_line_errors_unless_allowed(adapter, selfcontained_llava, tmp_path, capsys):
    out, data = adapter["out"], adapter["data"]
    base = [str(data / "fake" / sorted(p.name for p in (data / "fake").iterdir())[0]), "--model",
            str(selfcontained_llava), "--adapter", str(out), "--no-face-crop", "--max-new-tokens", "0", "--quiet"]
    for extra, has in ((["--expert", "blend"], "[blend (shipped, sha256"),  # same name, other weights
                       (["--no-expert"], "but this run has [none]"),
                       (["--preset", "fakevlm"], "but this run has [none]")):
        code, err = _explain(base + extra, capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"adapter '{out}' was trained with experts [blend={adapter['weights'].resolve()}" in err
        assert has in err and "--allow-expert-mismatch" in err
    res = tmp_path / "res.jsonl"
    code, err = _explain(base + ["--expert", "blend", "--allow-expert-mismatch", "--out", str(res)], capsys)
    assert code == 0, err
    conf = json.loads(res.with_suffix(".config.json").read_text())
    assert conf["config"]["allow_expert_mismatch"] is True
    check = conf["adapter_experts"]
    assert check["status"] == "mismatch allowed by --allow-expert-mismatch"
    assert check["recorded"][0]["sha256"] == file_sha256(adapter["weights"])
    assert check["used"][0]["sha256"] == file_sha256(SHIPPED) == conf["experts"][0]["sha256"]
    assert "--allow-expert-mismatch" in _help(capsys)


def _help(capsys) -> str:
    from x2dfd.cli import main as cli_main

    with pytest.raises(SystemExit):
        cli_main(["explain", "--help"])
    return capsys.readouterr().out


def test_api_uses_the_record_and_refuses_others(adapter, selfcontained_llava):
    from x2dfd import load_detector

    out, weights = adapter["out"], adapter["weights"]
    detector = load_detector(model=str(selfcontained_llava), adapter=str(out), device="cpu", face_crop=False)
    assert [e.info()["sha256"] for e in detector.experts] == [file_sha256(weights)]
    assert detector.explainer.expert_check["status"] == "match"
    with pytest.raises(UsageError, match="was trained with experts"):
        load_detector(model=str(selfcontained_llava), adapter=str(out), experts=[], device="cpu")
    d = load_detector(model=str(selfcontained_llava), adapter=str(out), experts=[f"blend={weights}"], device="cpu")
    assert d.explainer.expert_check["status"] == "match"  # naming the recorded weights is no mismatch
    d = load_detector(model=str(selfcontained_llava), adapter=str(out), experts=["blend"], device="cpu",
                      allow_expert_mismatch=True)
    assert d.explainer.expert_check["status"].startswith("mismatch allowed")


def test_demo_uses_the_record_and_refuses_others(adapter, selfcontained_llava):
    """The demo builds its explainer as explain does: the adapter's experts by default, others refused."""
    from x2dfd.demo.app import DemoConfig
    from x2dfd.explain import build_explainer

    common = dict(model=str(selfcontained_llava), adapter=str(adapter["out"]), face_crop=False, device="cpu")
    explainer = build_explainer(DemoConfig(**common))
    assert [e.info()["sha256"] for e in explainer.experts] == [file_sha256(adapter["weights"])]
    with pytest.raises(UsageError, match="--allow-expert-mismatch"):
        build_explainer(DemoConfig(**common, no_expert=True))
    allowed = build_explainer(DemoConfig(**common, no_expert=True, allow_expert_mismatch=True))
    assert allowed.experts == [] and allowed.expert_check["used"] == []


def test_missing_or_changed_weights_are_one_line_errors(adapter, selfcontained_llava, tmp_path):
    from x2dfd import load_detector

    copy = tmp_path / "adapter"
    shutil.copytree(adapter["out"], copy, ignore=shutil.ignore_patterns("checkpoints", "data"))
    moved = tmp_path / "w" / "blend_moved.safetensors"
    moved.parent.mkdir()
    shutil.copyfile(adapter["weights"], moved)
    shutil.copyfile(adapter["weights"].with_suffix(".json"), moved.with_suffix(".json"))
    preset = json.loads((copy / "preset.json").read_text())
    preset["experts"][0]["weights"] = preset["experts"][0]["weights_file"] = str(moved)
    (copy / "preset.json").write_text(json.dumps(preset))
    load = dict(model=str(selfcontained_llava), adapter=str(copy), device="cpu")
    assert load_detector(**load).explainer.expert_check["status"] == "match"

    with moved.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(UsageError) as err:
        load_detector(**load)
    msg = str(err.value)
    assert "\n" not in msg and f"'{moved}' changed since adapter '{copy}'" in msg and "--allow-expert-mismatch" in msg

    moved.unlink()
    with pytest.raises(UsageError) as err:
        load_detector(**load, allow_expert_mismatch=True)
    msg = str(err.value)
    assert "\n" not in msg and f"'{moved}'" in msg and "which is missing: put that file back" in msg

    # shipped weights that changed since training (an x2dfd upgrade): the recorded sha256 no longer matches
    preset["experts"][0].update(weights=None, weights_file=str(SHIPPED), shipped=True, sha256="0" * 64)
    (copy / "preset.json").write_text(json.dumps(preset))
    with pytest.raises(UsageError, match=r"this run has \[blend \(shipped, sha256 .*give --expert NAME=FILE"):
        load_detector(**load)


def test_no_expert_is_recorded_and_enforced(adapter, selfcontained_llava, tmp_path, capsys):
    """finetune --no-expert records "no experts" ([]); an adapter with that record runs none and refuses one."""
    from x2dfd.finetune.train import run_finetune

    run = tmp_path / "noexp"
    run_finetune(_finetune_cfg(adapter["data"], adapter["ranking"], selfcontained_llava, run, no_expert=True,
                               build_data_only=True))
    record = json.loads((run / "data" / "preset.json").read_text())
    assert record["experts"] == [] and record["recorded_by"]["command"] == "x2dfd finetune"
    assert "score is" not in _rows(run / "data" / "train.jsonl")[0]["question"]
    # --data-dir with other experts than the data's is refused before anything loads
    with pytest.raises(UsageError, match=r"was built with experts \[none\]"):
        run_finetune(_finetune_cfg(None, adapter["ranking"], selfcontained_llava, tmp_path / "x",
                                   data_dir=str(run / "data"), expert=["blend"]))
    copy = tmp_path / "adapter"
    shutil.copytree(adapter["out"], copy, ignore=shutil.ignore_patterns("checkpoints", "data"))
    preset = json.loads((copy / "preset.json").read_text())
    preset["experts"] = []
    (copy / "preset.json").write_text(json.dumps(preset))
    img = str(next((adapter["data"] / "real").iterdir()))
    res = tmp_path / "res.jsonl"
    code, err = _explain([img, "--model", str(selfcontained_llava), "--adapter", str(copy), "--no-face-crop",
                          "--max-new-tokens", "0", "--out", str(res), "--quiet"], capsys)
    assert code == 0, err
    assert _rows(res)[0]["experts"] == {}
    code, err = _explain([img, "--model", str(selfcontained_llava), "--adapter", str(copy), "--no-face-crop",
                          "--expert", "blend", "--quiet"], capsys)
    assert code == 2 and "was trained with experts [none], but this run has [blend (shipped" in err


def test_expert_score_takes_name_equals_weights(adapter, tmp_path, capsys):
    from x2dfd.experts.cli import main as expert_main

    weights, data = adapter["weights"], adapter["data"]
    own, shipped = tmp_path / "own.jsonl", tmp_path / "shipped.jsonl"
    assert expert_main(["score", str(data / "fake"), "--expert", f"blend={weights}", "--no-face-crop", "--out",
                        str(own), "--quiet"]) == 0
    assert expert_main(["score", str(data / "fake"), "--expert", "blend", "--no-face-crop", "--out", str(shipped),
                        "--quiet"]) == 0
    conf = json.loads(own.with_suffix(".config.json").read_text())
    [info] = conf["experts"]
    assert info["sha256"] == file_sha256(weights) and Path(info["weights"]).resolve() == weights.resolve()
    assert json.loads(shipped.with_suffix(".config.json").read_text())["experts"][0]["sha256"] == file_sha256(SHIPPED)
    assert [list(r["experts"]) for r in _rows(own)] == [["blend"]] * 4
    with pytest.raises(SystemExit):
        expert_main(["score", "--help"])
    assert "NAME[=WEIGHTS]" in capsys.readouterr().out
