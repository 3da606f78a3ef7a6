"""`x2dfd evaluate`: hand-computed metrics at frame and video level, fit splits, explanation checks, and the
command end to end (stub experts with --mllm none; the self-contained tiny LLaVA with --no-expert)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd import metrics as m
from x2dfd.cli import main as cli_main
from x2dfd.errors import UsageError
from x2dfd.evaluate import (EvaluateConfig, Item, Unit, add_fusions, evaluate_level, expand_perturb_args,
                            explanation_checks, frame_units, load_items, mentioned_cues, metric_block, plan_fit,
                            stated_verdict, subsets, video_units)
from x2dfd.records import Record
from tests.stubs import brightness_expert, registered

# ------------------------------------------------------------------------------------------- metrics


def test_detection_metrics_hand_case_with_ties():
    # reals 0.1, 0.5; fakes 0.5, 0.9. AUC: pairs (0.5>0.1)=1, (0.5=0.5)=1/2, (0.9>0.1)=1, (0.9>0.5)=1 -> 3.5/4.
    # AP: at 0.9 P=1 R=.5; at 0.5 P=2/3 R=1 -> .5*1 + .5*2/3. ROC (0,0) (0,.5) (.5,1) (1,1): FPR=FNR at .25.
    y, s = [0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]
    d = m.detection_metrics(y, s)
    assert d == pytest.approx({"auc": 0.875, "ap": 0.5 + 1 / 3, "eer": 0.25, "acc": 0.75, "tpr@fpr0.01": 0.5,
                               "tpr@fpr0.05": 0.5})
    assert m.accuracy(y, s, threshold=0.6) == 0.75 and m.accuracy(y, s, threshold=0.05) == 0.5
    rng = np.random.default_rng(0)
    y2, s2 = rng.integers(0, 2, 300), np.round(rng.random(300), 1)  # many ties
    d2 = m.detection_metrics(y2, s2, fprs=(0.1,))
    assert d2["auc"] == pytest.approx(m.roc_auc(y2, s2)) and d2["ap"] == pytest.approx(m.average_precision(y2, s2))
    assert d2["eer"] == pytest.approx(m.eer(y2, s2)) and d2["tpr@fpr0.1"] == pytest.approx(m.tpr_at_fpr(y2, s2, 0.1))
    assert all(np.isfinite(v) for v in d2.values())


def test_bootstrap_metrics_points_intervals_and_clusters():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 60)
    s = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, 120), 0, 1)
    res = m.bootstrap_metrics(y, s, n=200, seed=0)
    assert set(res) == {"auc", "ap", "eer", "acc", "tpr@fpr0.01", "tpr@fpr0.05"}
    for point, lo, hi in res.values():
        assert lo <= point <= hi and np.isfinite([lo, hi]).all()
    assert res == m.bootstrap_metrics(y, s, n=200, seed=0)
    assert m.bootstrap_metrics(y, s, n=0)["auc"][1:] == (None, None)
    # 12 videos of 10 identical frames: resampling frames as independent would give a far narrower interval
    groups = np.arange(120) // 10
    s_vid = np.repeat(rng.random(12) * 0.6 + 0.4 * (np.arange(12) >= 6), 10)
    flat = m.bootstrap_metrics(y, s_vid, n=300, seed=0)["auc"]
    clustered = m.bootstrap_metrics(y, s_vid, n=300, seed=0, groups=groups)["auc"]
    assert clustered[0] == flat[0] and (clustered[2] - clustered[1]) > 1.5 * (flat[2] - flat[1])
    with pytest.raises(UsageError, match="need both real"):
        m.bootstrap_metrics([1, 1, 1], [0.2, 0.3, 0.4])
    with pytest.raises(UsageError, match="NaN"):
        m.detection_metrics([0, 1], [0.2, float("nan")])


# --------------------------------------------------------------------------------- frame / video level
def _cfg(**kw) -> EvaluateConfig:
    return EvaluateConfig(data="x", bootstrap=kw.pop("bootstrap", 0), **kw)


def _video_case():
    """Two real and two fake videos as frame folders (video_id), and one video file per class."""
    frames = {"r1": (0, [0.2, 0.4]), "r2": (0, [0.6, 0.6]), "f1": (1, [0.5, 0.9]), "f2": (1, [0.1, 0.7])}
    items, records = [], {}
    for vid, (label, ps) in frames.items():
        for k, p in enumerate(ps):
            path = f"/d/{vid}/{k}.png"
            items.append(Item(path, label, video_id=vid, source="S" if label else "R"))
            records[path] = Record(path=path, p_fake=p, label="fake" if p >= 0.5 else "real", experts={"e": 1 - p})
    for path, label, ps in (("/d/real.mp4", 0, [0.3, None, 0.1]), ("/d/fake.mp4", 1, [0.8, 0.6, None])):
        items.append(Item(path, label))
        fr = [{"index": i, "p_fake": p, "experts": {} if p is None else {"e": 1 - p}} for i, p in enumerate(ps)]
        records[path] = Record(path=path, kind="video", p_fake=float(np.mean([p for p in ps if p is not None])),
                               frames=fr)
    return items, records


def test_frame_and_video_level_hand_computed():
    items, records = _video_case()
    frames = frame_units(items, records, ["mllm", "expert:e"])
    assert len(frames) == 8 + 6  # every sampled frame of the video files is a frame unit
    videos = video_units(frames, "mean", 3)
    by_key = {u.key: u for u in videos}
    assert by_key["video_id:r1"].scores["mllm"] == pytest.approx(0.3)
    assert by_key["video_id:f2"].scores["mllm"] == pytest.approx(0.4)
    assert by_key["file:/d/real.mp4"].scores["mllm"] == pytest.approx(0.2)  # the no-face frame is ignored
    assert by_key["file:/d/fake.mp4"].scores["expert:e"] == pytest.approx(0.3)
    cfg = _cfg()
    # video level, mllm: reals {0.3, 0.6, 0.2}, fakes {0.7, 0.4, 0.7}: 8 of 9 pairs ordered right
    vb = metric_block(videos, "mllm", cfg, groups=False)
    assert vb["auc"]["value"] == pytest.approx(8 / 9) and (vb["n_real"], vb["n_fake"]) == (3, 3)
    assert vb["auc"]["ci"] is None
    # frame level: reals {.2 .4 .6 .6 .3 .1}, fakes {.5 .9 .1 .7 .8 .6}; two no-face frames excluded
    fb = metric_block(frames, "mllm", cfg, groups=True)
    reals, fakes = [.2, .4, .6, .6, .3, .1], [.5, .9, .1, .7, .8, .6]
    pairs = sum((f > r) + 0.5 * (f == r) for f in fakes for r in reals) / 36
    assert fb["auc"]["value"] == pytest.approx(pairs)
    assert (fb["n_excluded_real"], fb["n_excluded_fake"]) == (1, 1)
    filled = metric_block(frames, "mllm", _cfg(undetermined="as-0.5"), groups=True)
    assert (filled["n_real"], filled["n_fake"], filled["n_excluded_real"]) == (7, 7, 0)
    assert video_units(frames, "max", 3)[0].scores["mllm"] == pytest.approx(0.4)


def test_fusions_sources_and_coverage():
    items, records = _video_case()
    frames = frame_units(items, records, ["mllm", "expert:e"])
    add_fusions(frames, ["mllm", "expert:e"])
    assert all(u.scores["fusion:mean"] == pytest.approx(0.5) for u in frames if u.scores["mllm"] is not None)
    res = evaluate_level(frames, ["mllm", "expert:e", "fusion:mean"], _cfg(bootstrap=50), groups=True, paired=True)
    paired = res["paired_auc"]
    assert paired["reference"] == "mllm" and set(paired["deltas"]) == {"expert:e", "fusion:mean"}
    d = paired["deltas"]["expert:e"]  # expert:e = 1 - mllm: AUC(e) - AUC(mllm) = 1 - 2 AUC(mllm)
    mllm_auc = res["systems"]["mllm"]["all"]["auc"]["value"]
    assert d["delta_auc"] == pytest.approx(1 - 2 * mllm_auc, abs=1e-6) and d["n"] == 12
    assert d["ci"][0] <= d["delta_auc"] <= d["ci"][1]
    assert res["coverage"] == {"real": {"n": 7, "scored": 6, "rate": 0.8571}, "fake": {"n": 7, "scored": 6, "rate": 0.8571}}
    assert res["systems"]["expert:e"]["all"]["auc"]["value"] == pytest.approx(1 - res["systems"]["mllm"]["all"]["auc"]["value"])
    assert "error" in res["systems"]["fusion:mean"]["all"] or res["systems"]["fusion:mean"]["all"]["auc"]["value"] == 0.5
    by = res["systems"]["mllm"]["by_source"]
    assert by["S"]["scored_as"] == "fakes of this source vs all real items"  # the fake source against all reals
    assert by["S"]["n_real"] == 6 and by["S"]["n_fake"] == 4


def test_sources_that_only_split_the_classes_give_no_breakdown():
    units = [Unit(f"u{i}", i % 2, "fake-src" if i % 2 else "real-src", f"u{i}", (f"u{i}",), {"s": i / 10})
             for i in range(6)]
    assert subsets(units) == {}
    units.append(Unit("x", 1, "other", "x", ("x",), {"s": 0.9}))
    assert set(subsets(units)) == {"fake-src", "other"}  # real-src vs all fakes is the whole set again


def test_single_class_subsets_become_errors_not_crashes():
    units = [Unit(f"u{i}", 1, None, f"u{i}", (f"u{i}",), {"s": 0.5 + i / 10}) for i in range(3)]
    units.append(Unit("r", 0, None, "r", ("r",), {"s": None}))  # the only real item has no score
    block = metric_block(units, "s", _cfg(), groups=False)
    assert block["error"] == "only fake items scored" and block["n_excluded_real"] == 1


# ------------------------------------------------------------------------------------------- fit split
def test_fit_split_fraction_source_all_and_external(tmp_path):
    items = [Item(f"/v{v}/{k}.png", int(v >= 10), video_id=f"v{v}", source="A" if v % 2 else "B")
             for v in range(20) for k in range(3)]
    plan = plan_fit(_cfg(fit_split="0.3", seed=1), items)
    assert plan.fit_paths and plan.fit_paths.isdisjoint(plan.report_paths)
    assert plan.fit_paths | plan.report_paths == {i.path for i in items}
    fit_videos = {i.video_id for i in items if i.path in plan.fit_paths}
    assert all(all(i.path in plan.fit_paths for i in items if i.video_id == v) for v in fit_videos)  # whole videos
    assert sum(int(v[1:]) >= 10 for v in fit_videos) == 3 and len(fit_videos) == 6  # stratified: 3 + 3 of 10 + 10
    assert plan_fit(_cfg(fit_split="0.3", seed=1), items).fit_paths == plan.fit_paths
    src = plan_fit(_cfg(fit_split="source:A"), items)
    assert {i.source for i in items if i.path in src.fit_paths} == {"A"} and len(src.report_paths) == 30
    allp = plan_fit(_cfg(fit_split="all"), items)
    assert allp.in_sample and allp.fit_paths == allp.report_paths and "optimistic" in allp.notes[0]
    assert plan_fit(_cfg(), items).mode == "none"
    with pytest.raises(UsageError, match="unknown source.*Available: A, B"):
        plan_fit(_cfg(fit_split="source:C"), items)
    with pytest.raises(UsageError, match="neither a fraction"):
        plan_fit(_cfg(fit_split="bogus"), items)
    # another DATA as fit set: files also in DATA are left out of the fit
    data, other = _folder(tmp_path / "data", 2), _folder(tmp_path / "other", 2)
    own = load_items(str(data))
    ext = plan_fit(_cfg(fit_split=str(other)), own + [])
    assert len(ext.extra_items) == 8 and ext.report_paths == {i.path for i in own}
    (tmp_path / "mix.csv").write_text("path,label\n" + "".join(f"{i.path},{i.label}\n" for i in own[:2]) +
                                      "".join(f"{i.path},{i.label}\n" for i in ext.extra_items))
    mixed = plan_fit(_cfg(fit_split=str(tmp_path / "mix.csv")), own)
    assert len(mixed.extra_items) == 8 and "also in DATA" in mixed.notes[0]


def test_fit_split_names_a_deepfakebench_split(tmp_path):
    paths = {}
    for split in ("train", "test"):
        for v in range(2):
            for lab in ("FF-real", "FF-DF"):
                p = tmp_path / split / lab / f"{v}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8)).save(p)
                paths.setdefault((lab, split), {})[f"{lab}_{v}"] = {"label": lab, "frames": [str(p.relative_to(tmp_path))]}
    spec = {"FF": {lab: {split: {"c23": paths[(lab, split)]} for split in ("train", "test")} for lab in ("FF-real", "FF-DF")}}
    data = tmp_path / "FF.json"
    data.write_text(json.dumps(spec))
    items = load_items(str(data))
    assert len(items) == 4 and all("/test/" in i.path for i in items) and {i.video_id for i in items} >= {"FF/FF-DF/FF-DF_0"}
    plan = plan_fit(EvaluateConfig(data=str(data), fit_split="train"), items)
    assert plan.mode == "external" and len(plan.extra_items) == 4 and all("/train/" in i.path for i in plan.extra_items)
    assert plan.report_paths == {i.path for i in items} and "split 'train'" in plan.description
    with pytest.raises(UsageError, match="no split 'val'"):
        plan_fit(EvaluateConfig(data=str(data), fit_split="val"), items)


# ---------------------------------------------------------------------------------------- explanations
class _Cue:
    def __init__(self, id, present, absent):
        self.id, self.present, self.absent = id, present, absent


BANK = [_Cue("eyes.a", "the two eyes differ", "both eyes match"),
        _Cue("skin.b", "the skin looks waxy", "the skin has natural pores"),
        _Cue("hair.c", "the hairline is blurred", "the hairline is sharp"),
        _Cue("mouth.d", "the teeth merge", "the teeth are separate")]


@pytest.mark.parametrize("text, verdict", [
    ("This image is fake. The skin looks waxy.", "fake"),
    ("this image is **Real** because ...", "real"),
    ("This image is real. This image is fake.", "real"),
    ("The image is fake.", None),
    ("This image is not real.", None),
    ("This image isith garbage", None),
    (None, None),
])
def test_stated_verdict(text, verdict):
    assert stated_verdict(text) == verdict


def test_mentioned_cues_and_explanation_checks_hand_computed():
    assert mentioned_cues("This image is fake: The Skin looks  WAXY, and both eyes match.", BANK) == (["skin.b"], ["eyes.a"])
    cues = lambda order, ps: [{"id": c, "phrase": "", "p_yes": p} for c, p in zip(order, ps)]  # noqa: E731
    items = [Item(f"/{i}.png", lab) for i, lab in enumerate([1, 1, 0, 0])]
    recs = {
        # fake verdict, mentions waxy skin (rank 1 of 4: in top-2) and blurred hairline (rank 4: not)
        "/0.png": Record(path="/0.png", p_fake=0.9, label="fake", cues=cues(["skin.b", "eyes.a", "mouth.d", "hair.c"],
                         [0.9, 0.7, 0.4, 0.1]), explanation="This image is fake. The skin looks waxy; the hairline is blurred."),
        # verdict disagrees with p_fake; 'absent' mention of a cue with P(yes) 0.2 (consistent)
        "/1.png": Record(path="/1.png", p_fake=0.8, label="fake", cues=cues(["eyes.a", "mouth.d", "skin.b", "hair.c"],
                         [0.8, 0.6, 0.3, 0.2]), explanation="This image is real: the hairline is sharp."),
        "/2.png": Record(path="/2.png", p_fake=0.2, label="real", explanation="No verdict here.",
                         cues=cues(["eyes.a", "mouth.d", "skin.b", "hair.c"], [0.5, 0.4, 0.3, 0.2])),
        "/3.png": Record(path="/3.png", p_fake=None, label="undetermined", error="no face"),
    }
    res = explanation_checks(items, recs, BANK, top_k=2)
    assert (res["n_explained"], res["verdict_stated"], res["no_verdict_rate"]) == (3, 2, pytest.approx(1 / 3, abs=1e-4))
    assert res["agree_with_p_fake_rate"] == 0.5 and res["disagreements"] == ["/1.png"]
    assert res["verdict_correct_rate"] == 0.5  # item 0 says fake (right), item 1 says real (wrong)
    g = res["cue_grounding"]
    assert (g["present_mentions"], g["precision_at_k"], g["recall_at_k"]) == (2, 0.5, round(1 / 6, 4))
    assert g["chance_precision"] == 0.5 and g["mean_rank_percentile_of_mentioned"] == 0.5
    assert (g["absent_mentions"], g["absent_consistent_rate"], g["absent_in_top_k_rate"]) == (1, 1.0, 0.0)
    assert g["items_mentioning_a_cue_rate"] == round(2 / 3, 4)
    assert explanation_checks(items, {}, BANK, 2) is None


def test_expand_perturb_args():
    assert expand_perturb_args(["d", "--perturb", "jpeg:90,70", "blur:1", "--seed", "1", "--perturb=noise:0.1",
                                "resize:0.5", "more"]) == [
        "d", "--perturb", "jpeg:90,70", "--perturb", "blur:1", "--seed", "1", "--perturb", "noise:0.1",
        "--perturb", "resize:0.5", "more"]
    assert expand_perturb_args(["--perturb", "bogus", "d"]) == ["--perturb", "bogus", "d"]


# ---------------------------------------------------------------------------------------- end to end
def _folder(root: Path, n: int, size: int = 40) -> Path:
    """real/ (dark) and fake/ (bright) noise crops in two sources, so a brightness expert separates them."""
    rng = np.random.default_rng(len(str(root)))
    for label, base in (("real", 60), ("fake", 170)):
        for src in ("gan", "swap"):
            d = root / label / src
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                level = base + (i * 15 if label == "real" else -i * 15)
                arr = np.clip(rng.normal(level, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


_Bright = brightness_expert("bright", "brightness")
_Green = brightness_expert("green", "brightness", channel=1)  # the green channel's mean


@pytest.fixture
def stub_experts():
    with registered(_Bright, _Green):
        yield


def test_evaluate_experts_alone_end_to_end_with_perturbations_fusion_and_resume(tmp_path, stub_experts, capsys):
    data = _folder(tmp_path / "data", 4)
    out = tmp_path / "eval"
    args = ["evaluate", str(data), "--mllm", "none", "--expert", "bright", "--expert", "green", "--no-face-crop",
            "--out", str(out), "--perturb", "jpeg:30", "resize:0.5", "--fit-split", "0.5", "--bootstrap", "50",
            "--quiet"]
    assert cli_main(args) == 0
    met = json.loads((out / "metrics.json").read_text())
    for name in ("metrics.json", "evaluate.html", "evaluate.config.json", "table_frame.md", "table_frame.csv",
                 "roc_frame.png", "robustness_frame.png"):
        assert (out / name).is_file(), name
    assert not (out / "table_video.md").exists() and met["protocol"]["levels"] == ["frame"]
    assert met["systems"] == ["expert:bright", "expert:green", "fusion:mean", "fusion:logistic"]
    assert [c["name"] for c in met["conditions"]] == ["clean", "jpeg:30", "resize:0.5"]
    assert met["conditions"][1]["perturbation"]["kind"] == "jpeg"
    assert met["data"]["n_items"] == 16 and met["data"]["n_reported"] == 8 and len(met["data"]["fingerprint"]) == 64
    assert met["models"]["mllm"] is None and [e["name"] for e in met["models"]["experts"]] == ["bright", "green"]
    logistic = met["fusion"]["logistic"]
    assert logistic["mode"] == "fraction" and not logistic["in_sample"] and logistic["n_fit"] == 8
    clean = met["conditions"][0]["levels"]["frame"]
    bright = clean["systems"]["expert:bright"]["all"]
    assert (bright["n_real"], bright["n_fake"]) == (4, 4) and bright["auc"]["value"] > 0.9
    assert bright["auc"]["ci"][0] <= bright["auc"]["value"] <= bright["auc"]["ci"][1]
    assert set(clean["systems"]["expert:bright"]["by_source"]) == {"gan", "swap"}
    assert set(met["robustness_auc"]["frame"]["fusion:mean"]) == {"clean", "jpeg:30", "resize:0.5"}
    assert "explanations" not in met["conditions"][0]
    assert set(clean["paired_auc"]["deltas"]) == {"expert:green", "fusion:mean", "fusion:logistic"}
    assert "paired_auc" not in met["conditions"][1]["levels"]["frame"]
    rows = list(csv.DictReader((out / "table_frame.csv").open()))
    assert len(rows) == 3 * 4 * 3 and {"auc", "auc_lo", "auc_hi", "n_real", "tpr@fpr0.01"} <= set(rows[0])
    md = (out / "table_frame.md").read_text()
    assert "| expert:bright | all | 4 | 4 |" in md and "AUC per condition" in md
    html = (out / "evaluate.html").read_text()
    assert "roc_frame.png" in html and "Robustness" in html and "fusion:logistic" in html
    # worst errors: per system the reals scored most fake and the fakes scored most real, linked to report rows
    worst = met["worst_errors"]
    assert set(worst) == set(met["systems"]) and worst["expert:bright"]["report"] == "reports/run/index.html"
    report = out / "reports" / "run"
    assert (report / "index.html").is_file() and (report / "records.js").is_file()
    rows = json.loads((report / "records.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))["rows"]
    for system, entry in worst.items():
        kinds = [it["kind"] for it in entry["items"]]
        assert kinds == ["real scored fake"] * 4 + ["fake scored real"] * 4, system  # the 8 reported items
        scores = [it["score"] for it in entry["items"]]
        assert scores[:4] == sorted(scores[:4], reverse=True) and scores[4:] == sorted(scores[4:])
        for it in entry["items"]:
            n = int(it["href"].rsplit("#row=", 1)[1])
            assert rows[n]["path"] == it["path"] and it["href"].startswith("reports/run/index.html#row=")
            assert f'href="{it["href"]}"' in html
    assert "Worst errors" in html
    records = sorted((out / "records").glob("*.jsonl"))
    assert len(records) == 3 and sum(len(p.read_text().splitlines()) for p in records) == 48
    # rerun: everything comes from the record caches, nothing is scored again
    _Bright.calls = 0
    assert cli_main(args) == 0
    assert _Bright.calls == 0 and sum(len(p.read_text().splitlines()) for p in records) == 48
    assert json.loads((out / "metrics.json").read_text())["conditions"][0]["levels"] == met["conditions"][0]["levels"]


def test_evaluate_video_level_from_manifest_and_escaping(tmp_path, stub_experts):
    rng = np.random.default_rng(0)
    lines = ["path,label,video_id,source"]
    for v in range(6):
        label = int(v >= 3)
        for k in range(3):
            p = tmp_path / f"v{v}_{k}.png"
            Image.fromarray(np.clip(rng.normal(100 + 40 * label + 10 * k, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(p)
            lines.append(f"{p.name},{label},vid{v},<b>src{label}</b>")
    from x2dfd.faceswap import write_video

    for label in (0, 1):  # one video file per class: its 5 frames are frame units, the file one video unit
        frames = [np.clip(rng.normal(100 + 40 * label, 30, (48, 48, 3)), 0, 255).astype(np.uint8) for _ in range(5)]
        write_video(frames, tmp_path / f"clip{label}.mp4")
        lines.append(f"clip{label}.mp4,{label},,<b>clip</b>")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert cli_main(["evaluate", str(tmp_path / "m.csv"), "--mllm", "none", "--expert", "bright", "--no-face-crop",
                     "--out", str(out), "--bootstrap", "20", "--quiet"]) == 0
    met = json.loads((out / "metrics.json").read_text())
    assert met["protocol"]["levels"] == ["frame", "video"] and met["systems"] == ["expert:bright"]
    video = met["conditions"][0]["levels"]["video"]["systems"]["expert:bright"]["all"]
    frame = met["conditions"][0]["levels"]["frame"]["systems"]["expert:bright"]["all"]
    assert (video["n_real"], video["n_fake"], frame["n_real"], frame["n_fake"]) == (4, 4, 14, 14)
    assert met["data"]["kinds"] == {"image": 18, "video": 2}
    assert (out / "table_video.md").is_file() and (out / "roc_video.png").is_file()
    html = (out / "evaluate.html").read_text()
    assert "&lt;b&gt;clip&lt;/b&gt;" in html and "<b>clip</b>" not in html and "<b>src1</b>" not in html


def test_evaluate_usage_errors_are_one_line(tmp_path, capsys, stub_experts):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    (tmp_path / "only_real.csv").write_text(f"path,label\n{img},0\n")
    assert cli_main(["evaluate", str(tmp_path / "only_real.csv"), "--mllm", "none", "--expert", "bright"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has only real items (1)" in err
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(tmp_path / "only_real.csv"), "--perturb", "jpeg:500"])
    assert "jpeg needs a JPEG quality 1-100" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(tmp_path / "only_real.csv"), "--mllm", "none", "--no-expert"])
    assert "leave nothing to evaluate" in capsys.readouterr().err


def test_evaluate_tiny_llava_end_to_end_with_explanation_checks(tmp_path, selfcontained_llava):
    data = _folder(tmp_path / "data", 1, size=32)
    cues = tmp_path / "cues.yaml"
    cues.write_text("cues:\n" + "".join(
        f"  - {{id: eyes.c{i}, region: eyes, question: 'Is cue {i} visible?', present: cue {i} is seen, "
        f"absent: cue {i} is not seen}}\n" for i in range(3)))
    out = tmp_path / "eval"
    assert cli_main(["evaluate", str(data), "--model", str(selfcontained_llava), "--no-face-crop", "--no-expert",
                     "--out", str(out), "--max-new-tokens", "3", "--bootstrap", "10", "--cues", str(cues),
                     "--cue-top-k", "2", "--quiet"]) == 0
    met = json.loads((out / "metrics.json").read_text())
    assert met["systems"] == ["mllm"] and met["models"]["mllm"]["model"] == str(selfcontained_llava)
    assert met["models"]["template_version"]
    block = met["conditions"][0]["levels"]["frame"]["systems"]["mllm"]["all"]
    assert (block["n_real"], block["n_fake"]) == (2, 2) and 0.0 <= block["auc"]["value"] <= 1.0
    checks = met["conditions"][0]["explanations"]
    assert checks["n_explained"] == 4 and 0.0 <= checks["no_verdict_rate"] <= 1.0
    assert checks["cue_grounding"]["n_cues"] == 3 and checks["cue_grounding"]["top_k"] == 2
    [cache] = (out / "records").glob("clean.*.jsonl")
    rows = [json.loads(x) for x in cache.read_text().splitlines()]
    assert all(len(r["cues"]) == 3 and r["explanation"].startswith("This image is") for r in rows)
    assert "Explanation checks" in (out / "evaluate.html").read_text()


def test_evaluate_references_with_one_mllm(tmp_path, selfcontained_llava):
    """--references without --system: the one MLLM is 'mllm'; a CSV with path,reference,label is read, paths
    relative to the CSV's folder; the detection outputs are those of a run without --references."""
    data = _folder(tmp_path / "data", 1, size=32)
    files = sorted(data.rglob("*.png"))
    refs = tmp_path / "data" / "refs.csv"
    with refs.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reference", "label"])
        for f in files:
            w.writerow([str(f.relative_to(data)), f"This image is {f.parts[-3]}. The skin is smooth.", f.parts[-3]])
    out = tmp_path / "eval"
    args = ["evaluate", str(data), "--model", str(selfcontained_llava), "--no-face-crop", "--no-expert",
            "--max-new-tokens", "3", "--bootstrap", "20", "--no-cue-check", "--out", str(out), "--quiet"]
    assert cli_main(args) == 0
    plain = json.loads((out / "metrics.json").read_text())
    assert "explanation_metrics" not in plain and not (out / "table_explanations.csv").exists()
    assert cli_main(args + ["--references", str(refs)]) == 0
    met = json.loads((out / "metrics.json").read_text())
    em = met["explanation_metrics"]
    assert set(em["systems"]) == {"mllm"} and em["references"]["matched_by_path"] == 4
    b = em["systems"]["mllm"]
    assert (b["n"], b["n_with_reference"], b["n_unexplained"]) == (4, 4, 0)
    assert 0.0 <= b["rouge_l"]["value"] <= 1.0 and 0.0 <= b["bleu"]["value"] <= 100.0
    assert b["rouge_l"]["ci"][0] <= b["rouge_l"]["value"] <= b["rouge_l"]["ci"][1]
    assert met["conditions"] == plain["conditions"] and met["systems"] == plain["systems"] == ["mllm"]
    assert "Explanations vs references" in (out / "table_frame.md").read_text()
    assert "Caveat" in (out / "evaluate.html").read_text()


def test_frames_per_video_caps_frame_images_per_video_and_is_recorded(tmp_path, stub_experts):
    """--frames-per-video N keeps N evenly spread frame images per video_id (seeded: the same ones again), leaves
    video files whole (the pipeline samples --frames of theirs) and is stated in metrics.json next to --frames."""
    from x2dfd.faceswap import write_video

    rng = np.random.default_rng(0)
    lines = ["path,label,video_id"]
    for v in range(4):
        label = int(v >= 2)
        for k in range(5):
            p = tmp_path / f"v{v}_{k}.png"
            Image.fromarray(np.clip(rng.normal(90 + 50 * label, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(p)
            lines.append(f"{p.name},{label},vid{v}")
    for label in (0, 1):
        frames = [np.clip(rng.normal(90 + 50 * label, 30, (48, 48, 3)), 0, 255).astype(np.uint8) for _ in range(5)]
        write_video(frames, tmp_path / f"clip{label}.mp4")
        lines.append(f"clip{label}.mp4,{label},")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    items = load_items(str(manifest), frames_per_video=2, seed=3)
    per_video = {}
    for i in items:
        per_video.setdefault(i.video_id, []).append(i.path)
    assert sorted(len(v) for k, v in per_video.items() if k.startswith("vid")) == [2, 2, 2, 2]
    assert sum(i.path.endswith(".mp4") for i in items) == 2 and len(items) == 10
    assert load_items(str(manifest), frames_per_video=2, seed=3) == items  # seeded: the same frames again
    assert len(load_items(str(manifest))) == 22
    out = tmp_path / "eval"
    assert cli_main(["evaluate", str(manifest), "--mllm", "none", "--expert", "bright", "--no-face-crop",
                     "--frames-per-video", "2", "--frames", "3", "--out", str(out), "--bootstrap", "0", "--quiet"]) == 0
    met = json.loads((out / "metrics.json").read_text())
    assert met["data"]["frames_per_video"] == 2 and met["data"]["n_items"] == 10
    assert met["protocol"]["frames_per_video"] == 2 and met["protocol"]["frames_per_video_file"] == 3
    assert "seeded offset" in met["protocol"]["frames_per_video_kind"]
    video = met["conditions"][0]["levels"]["video"]["systems"]["expert:bright"]["all"]
    frame = met["conditions"][0]["levels"]["frame"]["systems"]["expert:bright"]["all"]
    assert (video["n_real"], video["n_fake"]) == (3, 3) and (frame["n_real"], frame["n_fake"]) == (4 + 3, 4 + 3)
    assert json.loads((out / "evaluate.config.json").read_text())["config"]["frames_per_video"] == 2
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(manifest), "--frames-per-video", "0"])


def test_combined_ff_json_video_counts_at_every_level(tmp_path, stub_experts):
    """A DeepfakeBench FaceForensics++ JSON with 5 real, 5 Deepfakes and 5 Face2Face videos (DF and F2F sharing the
    ids): the video level counts 5 real and 10 fake videos, each manipulation its own 5 against all reals, and
    --frames-per-video 2 leaves 2 frames of each."""
    rng = np.random.default_rng(1)
    root = tmp_path / "datasets"
    entries: dict = {}
    for label_name, folder, level in (("FF-real", "original", 80), ("FF-DF", "Deepfakes", 150),
                                      ("FF-F2F", "Face2Face", 170)):
        videos = {}
        for v in range(5):
            vid = f"{v:03d}" if label_name == "FF-real" else f"{v:03d}_{v + 100:03d}"
            frames = [f"{folder}/c23/{vid}/{i:03d}.png" for i in range(3)]
            for f in frames:
                (root / f).parent.mkdir(parents=True, exist_ok=True)
                arr = np.clip(rng.normal(level + 8 * v, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / f)
            videos[vid] = {"label": label_name, "frames": frames}
        entries[label_name] = {"test": {"c23": videos}}
    path = tmp_path / "FaceForensics++.json"
    path.write_text(json.dumps({"FaceForensics++": entries}))
    out = tmp_path / "eval"
    assert cli_main(["evaluate", str(path), "--data-root", str(root), "--mllm", "none", "--expert", "bright",
                     "--no-face-crop", "--frames-per-video", "2", "--out", str(out), "--bootstrap", "0",
                     "--quiet"]) == 0
    met = json.loads((out / "metrics.json").read_text())
    clean = met["conditions"][0]["levels"]
    frame, video = (clean[lv]["systems"]["expert:bright"] for lv in ("frame", "video"))
    assert (video["all"]["n_real"], video["all"]["n_fake"]) == (5, 10)
    assert (frame["all"]["n_real"], frame["all"]["n_fake"]) == (10, 20)
    for name in ("FF-DF", "FF-F2F"):
        assert (video["by_source"][name]["n_real"], video["by_source"][name]["n_fake"]) == (5, 5)
        assert (frame["by_source"][name]["n_real"], frame["by_source"][name]["n_fake"]) == (10, 10)
    assert met["data"]["sources"] == {"FF-real": 10, "FF-DF": 10, "FF-F2F": 10}


def test_crop_check_counts_inputs_that_already_are_face_crops():
    from x2dfd.evaluate import crop_check

    items = [Item(f"/d/{k}.png", k % 2) for k in range(4)] + [Item("/d/v.mp4", 1)]
    records = {f"/d/{k}.png": Record(path=f"/d/{k}.png", media={"width": 100, "height": 100},
                                     face={"box": [5, 5, 95, 95] if k < 3 else [30, 30, 60, 60]}) for k in range(4)}
    records["/d/v.mp4"] = Record(path="/d/v.mp4", kind="video", media={"width": 100, "height": 100},
                                 frames=[{"index": 0, "face": None}, {"index": 4, "face": {"box": [0, 0, 100, 100]}}])
    warner = crop_check(_cfg(), items, records)
    assert warner.summary()["by_class"] == {"real": {"checked": 2, "look_like_crops": 2},
                                            "fake": {"checked": 3, "look_like_crops": 2}}
    assert "4 of 5 inputs look like existing face crops" in warner.message() and "--no-face-crop" in warner.message()
    assert crop_check(_cfg(face_crop=False), items, records) is None


def test_evaluate_warns_once_on_existing_face_crops(tmp_path, real_faces, stub_experts, capsys):
    """Tight face photos (stylegan2-vs-real's reals) with face cropping on: one stderr line with the --no-face-crop
    hint, the counts in metrics.json."""
    import shutil

    for k, f in enumerate(real_faces):
        (tmp_path / "data" / ("real", "fake")[k % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "data" / ("real", "fake")[k % 2] / f.name)
    assert cli_main(["evaluate", str(tmp_path / "data"), "--mllm", "none", "--expert", "bright", "--bootstrap", "0",
                     "--out", str(tmp_path / "ev")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "look like existing face crops" in x]
    assert len(lines) == 1 and lines[0].startswith("x2dfd evaluate: ") and "--no-face-crop" in lines[0]
    met = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert met["data"]["face_crops"]["look_like_crops"] >= 1 and lines[0] in met["notes"]
