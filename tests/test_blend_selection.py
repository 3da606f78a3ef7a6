"""bench/select_blend.py's rule (validation mean, speed floor, ties to the fastest) and bench/ship_blend.py's record
(evaluation and scope read from eval_experts' table, never measured again)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choose_takes_the_best_fast_enough_candidate_and_breaks_ties_by_speed():
    choose = _load("select_blend").choose
    rows = [{"candidate": "pair", "mean": 0.9168, "faces_per_s": 19.8},
            {"candidate": "triple", "mean": 0.9209, "faces_per_s": 13.4},
            {"candidate": "mirrored", "mean": 0.9300, "faces_per_s": 7.7}]
    assert choose(rows, 10.0) == "triple"  # the best one is too slow
    assert choose(rows, 5.0) == "mirrored"
    assert choose(rows, 10.0, tie=0.005) == "pair"  # within the tie: the faster
    assert choose(rows, 50.0) is None
    same = [{"candidate": "first", "mean": 0.9233, "faces_per_s": 12.1}, {"candidate": "second", "mean": 0.9251, "faces_per_s": 12.1}]
    assert choose(same, 10.0) == choose(same[::-1], 10.0) == "second"  # a tie in speed: the better mean, whatever the order


def test_speed_from_an_earlier_run_goes_by_architecture():
    """--speed-from: a candidate of an architecture the earlier run timed takes that run's median speed (its own
    timing kept beside it); an architecture it never timed keeps the speed timed now."""
    sel = _load("select_blend")
    from x2dfd.experts.blend import BlendConfig

    three = BlendConfig(members=3, member_backbones=["efficientnet_lite0", "efficientnet_lite0", "efficientnet_lite2"])
    assert sel.architecture(three) == "efficientnet_lite0+efficientnet_lite0+efficientnet_lite2@224"
    assert sel.architecture(BlendConfig(flip_average=True)) == "efficientnet_lite0@224 mirror-averaged"
    assert sel.architecture(BlendConfig(mask_evidence=1.5)) == "efficientnet_lite0@224 +mask evidence"
    arch3 = sel.architecture(three)
    earlier = [{"candidate": "old triple", "architecture": arch3, "faces_per_s": 12.5},
               {"candidate": "old triple b", "architecture": arch3, "faces_per_s": 11.6},
               {"candidate": "old lite2", "architecture": "efficientnet_lite2@224", "faces_per_s": 34.5}]
    rows = [{"candidate": "new triple", "architecture": arch3, "mean": 0.925, "faces_per_s": 3.1},
            {"candidate": "single", "architecture": "efficientnet_lite0@224", "mean": 0.912, "faces_per_s": 20.3}]
    assert sel.choose([dict(r) for r in rows], 10.0) == "single"  # timed on a slow machine, the triple is out
    sel.carry_speeds(rows, earlier, "old.json")
    assert abs(rows[0]["faces_per_s"] - 12.05) <= 0.051  # the median of 12.5 and 11.6
    assert rows[0]["faces_per_s_here"] == 3.1 and rows[0]["speed_from"].startswith("old.json: median of 2 row(s)")
    assert rows[1]["faces_per_s"] == 20.3 and "speed_from" not in rows[1]
    assert sel.choose(rows, 10.0) == "new triple"


def test_earlier_rows_read_the_architecture_beside_the_weights(tmp_path):
    """Rows of a selection written before rows had ``architecture`` get it from the config JSON beside their
    weights (no model is built); a row whose files are gone is left out."""
    import json

    sel = _load("select_blend")
    (tmp_path / "e.json").write_text(json.dumps({"config": {"members": 3, "member_backbones": [
        "efficientnet_lite0", "efficientnet_lite0", "efficientnet_lite2"]}}))
    (tmp_path / "p.json").write_text(json.dumps({"config": {"members": 2}}))
    earlier = tmp_path / "select.json"
    earlier.write_text(json.dumps({"rows": [
        {"candidate": "triple", "weights": str(tmp_path / "e.safetensors"), "faces_per_s": 12.5},
        {"candidate": "pair, mirror-averaged", "weights": str(tmp_path / "p.safetensors"), "faces_per_s": 7.7},
        {"candidate": "gone", "weights": str(tmp_path / "gone.safetensors"), "faces_per_s": 30.0},
        {"candidate": "new", "weights": "x", "architecture": "efficientnet_lite2@224", "faces_per_s": 34.5}]}))
    rows = sel.earlier_rows(earlier)
    assert [(r["candidate"], r["architecture"]) for r in rows] == [
        ("triple", "efficientnet_lite0+efficientnet_lite0+efficientnet_lite2@224"),
        ("pair, mirror-averaged", "efficientnet_lite0+efficientnet_lite0@224 mirror-averaged"),
        ("new", "efficientnet_lite2@224")]


def _row(s, c, auc, drop=None):
    r = {"expert": "E", "set": s, "condition": c, "n_real": 10, "n_fake": 10, "auc": auc, "auc_ci95": [auc - 0.01, auc + 0.01],
         "ap": auc, "eer": 0.1, "ece": 0.05}
    return {**r, "auc_drop": drop} if drop is not None else r


def test_ship_record_reads_every_figure_from_the_table():
    ship = _load("ship_blend")
    rows = [_row(s, "clean", a) for s, a in (("fr_swap1", 0.955), ("fr_swap2", 0.873), ("un_swap1", 0.883),
                                             ("un_swap2", 0.801), ("stylegan2", 0.338), ("un_swap2:pyramid", 0.746))]
    rows += [_row("fr_swap1", c, 0.9, d) for c, d in (("jpeg:50", 0.022), ("noise:0.02", 0.056))]
    rows += [_row("fr_swap1", "clean", 0.5) | {"expert": "other"}]  # another expert's row is not read
    ev, scope = ship.evaluation_and_scope({"rows": rows}, "E")
    assert "independent_swap" not in scope["measured"]  # no faceswap3 rows: nothing said about them
    ev3, scope3 = ship.evaluation_and_scope({"rows": rows + [_row("fr_swap3", "clean", 0.957), _row("un_swap3", "clean", 0.86)]}, "E")
    assert scope3["measured"]["independent_swap"].startswith("AUC 0.957 / 0.860 on faces-real-photos held-out / Unsplash")
    assert "never trained or tuned on" in ev3["un_swap3"]["set"] and ev3["fr_swap3"]["auc"] == 0.957
    assert ev["fr_swap1"]["auc"] == 0.955 and ev["fr_swap1_noise_0.02"]["auc_drop"] == 0.056
    assert ev["un_swap2_pyramid"]["set"].endswith("[pyramid only]")
    assert scope["measured"]["other_source"] == "AUC 0.883 / 0.801 on Unsplash swaps (faceswap / faceswap2)"
    assert scope["measured"]["degradation_auc_lost_fr_swap1"] == {"jpeg:50": 0.022, "noise:0.02": 0.056}
    assert scope["blind_to"][0]["auc"] == 0.34 and "MORE real" in scope["does_not_detect"]
    with pytest.raises(SystemExit, match="no rows for expert 'missing'"):
        ship.evaluation_and_scope({"rows": rows}, "missing")


SHARED_FR = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-real-photos" / "real"


@pytest.mark.skipif(not SHARED_FR.is_dir(), reason="needs ../shared")
def test_val_swaps_are_validation_photos_swapped_by_the_tuning_implementations(tmp_path):
    """--val-swaps: the photos given (the validation split's) against swaps between them by faceswap and
    faceswap2 (never faceswap3, the independent test), 1.3x crops, built once and reused from the folder."""
    sel = _load("select_blend")
    photos = sorted(SHARED_FR.glob("*.jpg"))[:4]
    views = sel.val_swap_views(photos, tmp_path)
    assert sorted(views) == ["val_swap1", "val_swap2"]
    for images, labels in views.values():
        assert len(images) == len(labels) and set(labels.tolist()) == {0, 1}
        assert (labels == 0).sum() <= 4 and all(im.mode == "RGB" for im in images)
    made = sorted(p.name for p in (tmp_path / "data").rglob("*.png"))
    assert made and {p.stem for p in photos} >= {Path(m).stem for m in made}
    assert not (tmp_path / "data" / "swap3").exists()
    again = sel.val_swap_views(photos, tmp_path)  # cached: the same crops
    assert [np.asarray(a).tobytes() for a in again["val_swap2"][0]] == [np.asarray(a).tobytes() for a in views["val_swap2"][0]]
