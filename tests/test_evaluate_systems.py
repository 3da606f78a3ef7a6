"""`x2dfd evaluate --system NAME=SPEC ...` (several MLLM setups side by side over the same face crops) and
`--references FILE` (explanation metrics): two tiny random LLaVA checkpoints built from the real llava-1.5 config,
the shipped blending expert, real faces from ../shared and classical face swaps made by x2dfd.faceswap."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from x2dfd.cli import main as cli_main
from x2dfd.errors import UsageError
from x2dfd.evaluate import EvaluateConfig, parse_system_specs

from conftest import shared_path
from tests.stubs import brightness_expert


# ------------------------------------------------------------------------------------------ SPEC syntax
def test_system_specs_are_parsed_and_checked_without_loading(tmp_path):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    model = tmp_path / "ckpt"
    model.mkdir()
    cfg = EvaluateConfig(data="x", model=str(model), expert=["blend"], system=[
        "rel=preset:x2dfd-release", f"lora={adapter}", f"base={model}",
        f"both=model={model},adapter={adapter},preset=fakevlm", "hub=org/some-model"])
    specs = {s.name: s for s in parse_system_specs(cfg)}
    assert [s.system for s in specs.values()] == ["mllm:rel", "mllm:lora", "mllm:base", "mllm:both", "mllm:hub"]
    assert specs["rel"].options.preset == "x2dfd-release" and specs["rel"].options.model == str(model)
    assert specs["lora"].options.adapter == str(adapter) and specs["lora"].options.model == str(model)
    assert specs["base"].options.model == str(model) and specs["base"].options.adapter is None
    assert (specs["both"].options.adapter, specs["both"].options.preset) == (str(adapter), "fakevlm")
    assert specs["hub"].options.model == "org/some-model"
    assert all(s.expert_specs == ["blend"] for s in specs.values())  # --expert: one shared set for every system
    # without --expert a preset brings its own experts (as `x2dfd explain --preset` does)
    assert parse_system_specs(EvaluateConfig(data="x", system=["r=preset:x2dfd-release"]))[0].expert_specs == [
        "swinv2", "grip"]
    for bad, message in [
        (["a=model=x,colour=red"], "KEY one of model, adapter, preset"),
        (["a=preset:"], "preset: needs a name"),
        (["a=preset:nonesuch"], "unknown preset 'nonesuch'"),
        (["=preset:fakevlm"], "give NAME=SPEC"),
        (["a b=preset:fakevlm"], "give NAME=SPEC"),
        (["a=preset:fakevlm", "a=preset:x2dfd"], "used twice"),
        (["a=./no/such/folder"], "no such folder"),
        ([f"a=model={tmp_path / 'missing'}"], "no such directory"),
    ]:
        with pytest.raises(UsageError, match=message):
            EvaluateConfig(data="x", system=bad)
    with pytest.raises(UsageError, match="give the adapter and the preset in each SPEC"):
        EvaluateConfig(data="x", adapter=str(adapter), system=["a=preset:fakevlm"])
    with pytest.raises(UsageError, match="--mllm none"):
        EvaluateConfig(data="x", mllm="none", system=["a=preset:fakevlm"])
    with pytest.raises(UsageError, match="--mllm none has none"):
        EvaluateConfig(data="x", mllm="none", references="refs.jsonl")


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def face_data(tmp_path_factory):
    """2 real photos and 2 classical face swaps between them (real/ and fake/), and a 2-frame-per-video manifest."""
    from x2dfd.faceswap import make_face_swap
    from x2dfd.media import load_image

    real = shared_path("data", "stylegan2-vs-real", "images", "real")
    root = tmp_path_factory.mktemp("faces") / "data"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    a, b = load_image(real / "real_10.jpg"), load_image(real / "real_20.jpg")
    a.save(root / "real" / "r10.png")
    b.save(root / "real" / "r20.png")
    make_face_swap(a, b, seed=0)[0].save(root / "fake" / "s10_on_20.png")
    make_face_swap(b, a, seed=0)[0].save(root / "fake" / "s20_on_10.png")
    return root


@pytest.fixture(scope="module")
def second_llava(tmp_path_factory):
    """The conftest tiny LLaVA's shape with other random weights (seed 1): a second, different system."""
    from x2dfd.tiny import build_checkpoint

    source = shared_path("checkpoints", "llava-1.5-7b-hf")
    return build_checkpoint(source, tmp_path_factory.mktemp("llava-seed1") / "ckpt", seed=1)


class _Spy:
    """Counts face detections and expert passes, and hashes every crop each MLLM judges."""

    def __init__(self, monkeypatch):
        import x2dfd.face
        import x2dfd.mllm
        from x2dfd.experts.blend import BlendExpert

        self.lock = threading.Lock()
        self.detections: list[int] = []
        self.expert_faces = 0
        self.seen: dict[str, list[str]] = {}
        extract, judge, score = x2dfd.face.extract_faces, x2dfd.mllm.MLLM.judge, BlendExpert.score
        spy = self

        def counting_extract(image, *a, **kw):
            with spy.lock:
                spy.detections.append(image.width)
            return extract(image, *a, **kw)

        def recording_judge(mllm, images, questions, max_new_tokens=128):
            with spy.lock:
                spy.seen.setdefault(mllm.options.model, []).extend(
                    hashlib.sha256(im.convert("RGB").tobytes() + repr(im.size).encode()).hexdigest() for im in images)
            return judge(mllm, images, questions, max_new_tokens=max_new_tokens)

        def counting_score(expert, faces):
            with spy.lock:
                spy.expert_faces += len(faces)
            return score(expert, faces)

        monkeypatch.setattr(x2dfd.face, "extract_faces", counting_extract)
        monkeypatch.setattr(x2dfd.mllm.MLLM, "judge", recording_judge)
        monkeypatch.setattr(BlendExpert, "score", counting_score)

    def reset(self):
        self.detections.clear()
        self.expert_faces = 0
        self.seen.clear()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_two_systems_and_the_expert_side_by_side_with_references(tmp_path, face_data, tiny_llava, second_llava,
                                                                 monkeypatch, capsys):
    spy = _Spy(monkeypatch)
    files = sorted(face_data.rglob("*.png"))
    # references next to DATA: relative paths (resolved against the references file's folder), one row per file
    # except one, one row for a file DATA does not have (reported, not fatal)
    refs = _write_jsonl(face_data / "refs.jsonl", [
        {"path": str(f.relative_to(face_data)), "label": f.parent.name,
         "reference": f"This image is {f.parent.name}. The skin and the mouth look "
                      f"{'blended at the boundary' if f.parent.name == 'fake' else 'natural'}."}
        for f in files[1:]] + [{"path": "real/elsewhere.png", "reference": "This image is real."}])
    cues = tmp_path / "cues.yaml"
    cues.write_text("cues:\n" + "".join(
        f"  - {{id: mouth.c{i}, region: mouth, question: 'Is cue {i} visible?', present: cue {i} is seen, "
        f"absent: cue {i} is not seen}}\n" for i in range(3)))
    out = tmp_path / "eval"
    args = ["evaluate", str(face_data), "--system", f"a=model={tiny_llava}", "--system", f"b={second_llava}",
            "--device", "cpu", "--max-new-tokens", "4", "--batch-size", "2", "--bootstrap", "30", "--cues", str(cues),
            "--references", str(refs), "--out", str(out), "--quiet"]
    assert cli_main(args) == 0
    met = json.loads((out / "metrics.json").read_text())
    assert met["systems"] == ["mllm:a", "mllm:b", "expert:blend"]
    # decode + face detection + expert once per item, whatever the number of systems
    assert len(spy.detections) == 4 and spy.expert_faces == 4
    # every system judged byte-identical crops (the ones the expert scored)
    seen = {model: sorted(h) for model, h in spy.seen.items()}
    assert set(seen) == {str(tiny_llava), str(second_llava)} and len(seen[str(tiny_llava)]) == 4
    assert seen[str(tiny_llava)] == seen[str(second_llava)]
    # one table and one ROC naming both systems and the expert, paired AUC deltas against the first system
    md = (out / "table_frame.md").read_text()
    for system in ("mllm:a", "mllm:b", "expert:blend"):
        assert f"| {system} | all | 2 | 2 |" in md
    clean = met["conditions"][0]["levels"]["frame"]
    assert clean["paired_auc"]["reference"] == "mllm:a" and set(clean["paired_auc"]["deltas"]) == {"mllm:b",
                                                                                                 "expert:blend"}
    assert (out / "roc_frame.png").stat().st_size > 1000
    systems = met["models"]["systems"]
    assert systems["mllm:a"]["mllm"]["model"] == str(tiny_llava) and systems["mllm:b"]["spec"] == str(second_llava)
    assert systems["mllm:a"]["experts"] == ["blend"]
    recs = met["conditions"][0]["records_by_system"]
    assert set(recs) == {"mllm:a", "mllm:b"} and recs["mllm:a"] != recs["mllm:b"]
    for system, rel in recs.items():
        rows = [json.loads(x) for x in (out / rel).read_text().splitlines()]
        assert len(rows) == 4 and all(r["p_fake"] is not None and r["face"]["box"] for r in rows)
        assert all(r["explanation"] for r in rows) and {r["model"] for r in rows} == {systems[system]["mllm"]["model"]}
    checks = met["conditions"][0]["explanations_by_system"]  # the cue check ran with each system's own MLLM
    assert set(checks) == {"mllm:a", "mllm:b"} and all(c["cue_grounding"]["n_cues"] == 3 for c in checks.values())
    blend = {json.loads(x)["path"]: json.loads(x)["experts"]["blend"] for x in (out / recs["mllm:a"]).read_text().splitlines()}
    blend_b = {json.loads(x)["path"]: json.loads(x)["experts"]["blend"] for x in (out / recs["mllm:b"]).read_text().splitlines()}
    assert blend == blend_b  # the same expert scores went into both prompts
    # explanation metrics against the references, per MLLM system, with intervals that bracket the point
    em = met["explanation_metrics"]
    rep = em["references"]
    assert (rep["entries"], rep["matched_by_path"], rep["unmatched"], rep["items_with_reference"]) == (4, 3, 1, 3)
    assert rep["unmatched_examples"] == ["real/elsewhere.png"]
    assert any("1 path(s) match no DATA item" in n for n in met["notes"])
    assert set(em["systems"]) == {"mllm:a", "mllm:b"} and "label" in em["caveat"]
    for b in em["systems"].values():
        assert (b["n"], b["n_real"], b["n_fake"], b["n_with_reference"]) == (4, 2, 2, 3)
        for key, top in (("verdict_accuracy", 1), ("verdict_f1", 1), ("agreement", 1), ("rouge_l", 1), ("bleu", 100)):
            v = b[key]
            if v is None:  # F1 is undefined when no text says fake and no item is fake (not the case here)
                assert key == "verdict_f1"
                continue
            assert 0.0 <= v["value"] <= top and v["ci"][0] <= v["value"] <= v["ci"][1], (key, v)
    assert "Explanations vs references" in md and "Caveat" in md
    html = (out / "evaluate.html").read_text()
    assert "Explanations vs references" in html and "mllm:b" in html and "MLLM systems" in html
    assert (out / "table_explanations.csv").read_text().count("mllm:") == 2
    # one item report per system, each linking the other: the page switches between the loaded setups
    met = json.loads((out / "metrics.json").read_text())
    assert met["worst_errors"]["mllm:b"]["report"] == "reports/b/index.html"
    assert met["worst_errors"]["expert:blend"]["report"] == "reports/a/index.html"  # experts: the first system's
    page_a = (out / "reports" / "a" / "index.html").read_text()
    page_b = (out / "reports" / "b" / "index.html").read_text()
    assert '<b>mllm:a</b>' in page_a and '<a href="../b/index.html">mllm:b</a>' in page_a
    assert '<a href="../a/index.html">mllm:a</a>' in page_b and '<b>mllm:b</b>' in page_b

    # rerun with DD-VQA-style references (question/answer rows, several answers, matched by file name): nothing
    # is decoded, detected, scored or judged again; only the explanation metrics change
    spy.reset()
    ddvqa = _write_jsonl(tmp_path / "ddvqa.jsonl", [
        {"path": f"/elsewhere/{f.name}", "question": q, "answer": [f"Yes, the {part} looks {f.parent.name}.",
                                                                   f"The {part} is {f.parent.name}."]}
        for f in files for q, part in (("Does the image look fake?", "image"), ("Does the mouth look fake?", "mouth"))])
    args[args.index("--references") + 1] = str(ddvqa)
    assert cli_main(args) == 0
    assert spy.detections == [] and spy.expert_faces == 0 and spy.seen == {}
    met2 = json.loads((out / "metrics.json").read_text())
    rep2 = met2["explanation_metrics"]["references"]
    assert (rep2["entries"], rep2["matched_by_file_name"], rep2["items_with_reference"]) == (4, 4, 4)
    assert any("by file name only" in n for n in met2["notes"])
    assert all(b["n_with_reference"] == 4 for b in met2["explanation_metrics"]["systems"].values())
    assert met2["conditions"][0]["levels"] == met["conditions"][0]["levels"]  # the detection metrics are unchanged
    capsys.readouterr()

    # a references file none of whose paths is in DATA: one line, exit 2, before any model loads
    spy.reset()
    unknown = _write_jsonl(tmp_path / "unknown.jsonl", [{"path": "nowhere/x.png", "reference": "This image is real."}])
    args[args.index("--references") + 1] = str(unknown)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "none of its 1 paths matches an item of DATA" in err
    assert spy.detections == [] and spy.seen == {}


def test_a_new_system_reuses_the_crops_and_the_cached_systems(tmp_path, face_data, tiny_llava, second_llava,
                                                              monkeypatch):
    """Resume per system: adding a system to a finished run judges only with the new one; crops come from prepared/."""
    spy = _Spy(monkeypatch)
    out = tmp_path / "eval"
    base = ["evaluate", str(face_data), "--device", "cpu", "--max-new-tokens", "0", "--bootstrap", "0",
            "--out", str(out), "--quiet", "--system", f"a={tiny_llava}"]
    assert cli_main(base) == 0
    assert len(spy.detections) == 4 and set(spy.seen) == {str(tiny_llava)}
    crops_a = sorted(spy.seen[str(tiny_llava)])
    spy.reset()
    assert cli_main(base + ["--system", f"b={second_llava}"]) == 0
    assert spy.detections == [] and spy.expert_faces == 0 and set(spy.seen) == {str(second_llava)}
    met = json.loads((out / "metrics.json").read_text())
    assert met["systems"] == ["mllm:a", "mllm:b", "expert:blend"]
    assert "explanation_metrics" not in met and "explanations_by_system" not in met["conditions"][0]
    # the stored crops are exactly what the live pipeline crops: a plain run (no --system) of system a's model
    # judges the same pixels and gives the same p_fake
    spy.reset()
    single = tmp_path / "single"
    assert cli_main(base[:base.index("--out")] + ["--out", str(single), "--quiet", "--model", str(tiny_llava)]) == 0
    assert len(spy.detections) == 4 and sorted(spy.seen[str(tiny_llava)]) == crops_a
    plain = json.loads((single / "metrics.json").read_text())
    assert plain["systems"] == ["mllm", "expert:blend", "fusion:mean"]

    def p_fakes(folder, rel):
        return {json.loads(x)["path"]: (json.loads(x)["p_fake"], json.loads(x)["experts"])
                for x in (folder / rel).read_text().splitlines()}

    assert p_fakes(single, plain["conditions"][0]["records"]) == p_fakes(
        out, met["conditions"][0]["records_by_system"]["mllm:a"])


def test_videos_and_perturbations_with_systems(tmp_path, selfcontained_llava, monkeypatch):
    """Video files and --perturb through the shared crops: every sampled frame is cropped once per condition, the
    video records are the pipeline's own (frames, aggregate, one explanation), and the video level is reported."""
    import numpy as np
    from PIL import Image

    from x2dfd.faceswap import write_video
    from x2dfd.tiny import build_selfcontained_llava

    other = build_selfcontained_llava(tmp_path / "other", seed=1)
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for label in (0, 1):
        for k in range(2):
            p = tmp_path / f"img{label}{k}.png"
            Image.fromarray(np.clip(rng.normal(90 + 60 * label, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(p)
            lines.append(f"{p.name},{label}")
            frames = [np.clip(rng.normal(90 + 60 * label, 30, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
            write_video(frames, tmp_path / f"clip{label}{k}.mp4")
            lines.append(f"clip{label}{k}.mp4,{label}")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # undecodable: one error record per system
    lines.append("broken.png,0")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    spy = _Spy(monkeypatch)
    out = tmp_path / "eval"
    assert cli_main(["evaluate", str(tmp_path / "m.csv"), "--system", f"one={selfcontained_llava}", "--system",
                     f"two=model={other}", "--system", f"rel=model={selfcontained_llava},preset=x2dfd-release",
                     "--no-expert", "--no-face-crop", "--frames", "3", "--perturb", "jpeg:50",
                     "--max-new-tokens", "2", "--bootstrap", "10", "--no-cue-check", "--device", "cpu",
                     "--out", str(out), "--quiet"]) == 3  # 3: an input got no verdict
    met = json.loads((out / "metrics.json").read_text())
    assert met["systems"] == ["mllm:one", "mllm:two", "mllm:rel"] and met["protocol"]["levels"] == ["frame", "video"]
    rel = met["models"]["systems"]["mllm:rel"]
    assert rel["preset"] == "x2dfd-release" and rel["template_version"].startswith("preset:x2dfd-release@")
    assert set(spy.seen) == {str(selfcontained_llava), str(other)}
    assert len(spy.seen[str(selfcontained_llava)]) == 2 * len(spy.seen[str(other)])  # one and rel: the same model
    assert len(spy.detections) == 2 * (4 + 4 * 3)  # (4 images + 4 videos x 3 frames) per condition, once
    assert [c["name"] for c in met["conditions"]] == ["clean", "jpeg:50"]
    video = met["conditions"][1]["levels"]["video"]["systems"]["mllm:two"]["all"]
    assert (video["n_real"], video["n_fake"]) == (4, 4)
    frame = met["conditions"][0]["levels"]["frame"]["systems"]["mllm:one"]["all"]
    assert (frame["n_real"], frame["n_fake"], frame["n_excluded_real"]) == (8, 8, 1)
    for system, rel in met["conditions"][0]["records_by_system"].items():
        rows = {Path(r["path"]).name: r for r in map(json.loads, (out / rel).read_text().splitlines())}
        clip = rows["clip10.mp4"]
        assert clip["kind"] == "video" and len(clip["frames"]) == 3 and clip["explanation"]
        assert sum(f.get("explained", False) for f in clip["frames"]) == 1 and clip["aggregate"] == "mean"
        assert rows["broken.png"]["label"] == "undetermined" and "broken.png" in rows["broken.png"]["error"]
    assert set(met["robustness_auc"]["video"]) == {"mllm:one", "mllm:two", "mllm:rel"}
    assert len(set(met["conditions"][0]["records_by_system"].values())) == 3  # the preset's prompt: its own cache
    assert (out / "roc_video.png").is_file() and (out / "robustness_frame.png").is_file()


def test_stored_crops_keep_the_landmarks_the_evidence_names_regions_by():
    """A crop read back from the prepared store maps the stored source landmarks into crop pixels as FaceCrop has
    them (to the 0.1 px the record rounds to); a rotated (aligned) crop gives None rather than wrong points."""
    photos = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-real-photos" / "real"
    if not photos.is_dir():
        pytest.skip("../shared is absent")
    from x2dfd.evaluate import StoredCrop
    from x2dfd.face import extract_faces
    from x2dfd.media import load_image

    [crop] = extract_faces(load_image(sorted(photos.glob("*.jpg"))[0]))
    stored = StoredCrop(crop.image, crop.info())
    assert crop.landmarks is not None and np.abs(stored.landmarks - crop.landmarks).max() < 0.2
    assert StoredCrop(crop.image, {**crop.info(), "aligned": True}).landmarks is None
    assert StoredCrop(crop.image, None).landmarks is None


# ------------------------------------------------------------------------- experts an adapter was trained with
_Luma = brightness_expert("luma", "luminance")
_Chroma = brightness_expert("chroma", "chroma")


class _Loaded(Exception):
    pass


def test_adapter_experts_are_enforced_by_evaluate_and_each_system(tmp_path, monkeypatch, capsys):
    """An adapter folder from x2dfd finetune records its experts (preset.json): evaluate with other --expert stops with
    one line before any MLLM loads (alone through x2dfd.api.build_explainer, and per --system), unless
    --allow-expert-mismatch; without --expert the recorded experts are the ones run."""
    from PIL import Image

    from x2dfd import experts
    from x2dfd.presets import expert_entries, write_training_record

    experts.register_expert("luma", _Luma, overwrite=True)
    experts.register_expert("chroma", _Chroma, overwrite=True)
    monkeypatch.setattr("x2dfd.mllm.load_mllm", lambda *a, **k: (_ for _ in ()).throw(_Loaded()))
    try:
        adapter = tmp_path / "lora"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        write_training_record(adapter, expert_entries([_Luma()], ["luma"]), None)
        for label, level in (("real", 60), ("fake", 190)):
            (tmp_path / "data" / label).mkdir(parents=True)
            Image.new("RGB", (24, 24), (level,) * 3).save(tmp_path / "data" / label / "a.png")
        base = ["evaluate", str(tmp_path / "data"), "--no-face-crop", "--quiet", "--bootstrap", "0", "--out",
                str(tmp_path / "ev")]
        for extra in (["--adapter", str(adapter)], ["--system", f"a=adapter={adapter}"]):
            capsys.readouterr()
            assert cli_main(base + extra + ["--expert", "chroma"]) == 2, extra
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and "was trained with experts [luma" in err and "this run has [chroma" in err, repr(err)
            assert err.startswith("x2dfd evaluate: error: --system a: ") == (extra[0] == "--system")
            with pytest.raises(_Loaded):  # allowed: it goes on to load the MLLM
                cli_main(base + extra + ["--expert", "chroma", "--allow-expert-mismatch"])
            with pytest.raises(_Loaded):  # the recorded experts, unnamed: no complaint
                cli_main(base + extra)
        spec = parse_system_specs(EvaluateConfig(data="x", system=[f"a=adapter={adapter}"]))[0]
        assert spec.expert_specs == ["luma"]
    finally:
        experts.unregister_expert("luma")
        experts.unregister_expert("chroma")
