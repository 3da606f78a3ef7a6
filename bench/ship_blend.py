"""Ship a chosen blend candidate: copy its weights into experts/weights and write the JSON beside them with the
training record, how it was chosen, every figure bench/eval_experts.py measured, and the scope those figures give.

    .venv/bin/python bench/select_blend.py A=... B=... AB=...                      # writes bench/out/select_blend.json
    .venv/bin/python bench/eval_experts.py --expert blend=runs/AB@AB --table t_ab  # bench/out/eval_experts/t_ab.json
    .venv/bin/python bench/ship_blend.py --weights runs/AB/blend_x.safetensors --candidate AB \\
        --table bench/out/eval_experts/t_ab.json --label AB --reproduce ensemble="x2dfd expert ensemble ..."

Nothing is measured here: the figures are read from the two JSON files, so the shipped record says exactly what
those commands printed. ``--reproduce KEY=COMMAND`` (repeatable) adds to the reproduce commands the members'
own records carry; ``--keep-reproduce`` also keeps the previously shipped record's (members it shares). The
previously shipped record's selection is kept under ``training.selection.earlier``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "experts" / "weights"
CONDITIONS = ("jpeg:50", "blur:1", "resize:0.5", "noise:0.02")
SET_TEXT = {
    "fr_swap1": "faces-real-photos held-out originals vs x2dfd.faceswap swaps (Delaunay warp + Reinhard + Poisson clone)",
    "fr_swap2": "faces-real-photos held-out originals vs x2dfd.faceswap2 swaps (similarity warp; 3 methods round-robin)",
    "un_swap1": "stylegan2-vs-real REAL half (Unsplash, unseen source) vs x2dfd.faceswap swaps between those photos",
    "un_swap2": "stylegan2-vs-real REAL half (Unsplash, unseen source) vs x2dfd.faceswap2 swaps between those photos",
    "fr_swap3": "faces-real-photos held-out originals vs x2dfd.faceswap3 swaps (thin-plate-spline warp, linear "
                "Monge-Kantorovich colour transfer, ellipse mask, linear-ramp alpha blend; never trained or tuned on)",
    "un_swap3": "stylegan2-vs-real REAL half (Unsplash, unseen source) vs x2dfd.faceswap3 swaps between those photos "
                "(never trained or tuned on)",
    "stylegan2": "Unsplash real vs StyleGAN2 (fully synthetic, not blended)",
}


def evaluation_and_scope(table: dict, label: str) -> tuple[dict, dict]:
    rows = {(r["set"], r["condition"]): r for r in table["rows"] if r.get("expert") in (label, None)}
    if ("fr_swap1", "clean") not in rows:
        raise SystemExit(f"ship_blend: the table has no rows for expert '{label}' (labels: "
                         f"{sorted({r.get('expert') for r in table['rows']})})")
    ev = {"command": table.get("command", ".venv/bin/python bench/eval_experts.py"),
          "note": "faces detected by x2dfd's detector, 1.3x crops; degradations applied to the full image before "
                  "detection (x2dfd.perturb); auc_drop = clean AUC - degraded AUC"}
    for (s, c), r in sorted(rows.items()):
        if ":" in s and c != "clean":
            continue
        key = s.replace(":", "_") if c == "clean" else f"{s}_{c.replace(':', '_')}"
        base = s.split(":")[0]
        ev[key] = {"set": SET_TEXT[base] + (f" [{s.split(':')[1]} only]" if ":" in s else "") + (f", {c}" if c != "clean" else ""),
                   **{k: r[k] for k in ("n_real", "n_fake", "auc", "auc_ci95", "ap", "eer", "ece", "auc_drop") if k in r}}
    auc = lambda s: rows[(s, "clean")]["auc"]  # noqa: E731
    lost = lambda s: {c: rows[(s, c)]["auc_drop"] for c in CONDITIONS if (s, c) in rows}  # noqa: E731
    scope = {
        "detects": "blending boundaries of face swaps / face replacement pasted into a real photo (self-blended-image "
                   "training: real faces only, no fake images)",
        "does_not_detect": "fully synthetic faces (GAN / diffusion whole-image generation): on StyleGAN2 vs Unsplash its "
                           f"AUC is {auc('stylegan2'):.2f}" + (" (it rates those GAN faces MORE real than the photos)"
                                                             if auc("stylegan2") < 0.5 else "") +
                           "; entire-image edits, attribute editing and expression re-enactment without a pasted region "
                           "were not measured",
        "covers_kinds": ["face swaps (a face pasted into a real photo)"],
        "blind_to": [{"kind": "fully synthetic faces (GAN / diffusion)", "auc": round(auc("stylegan2"), 2),
                      "on": "StyleGAN2 vs Unsplash real photos, bench/eval_experts.py"}],
        "measured": {
            "own_source_own_swap": f"AUC {auc('fr_swap1'):.3f} on faces-real-photos held-out swaps (x2dfd.faceswap)",
            "own_source_other_swap": f"AUC {auc('fr_swap2'):.3f} on faces-real-photos held-out swaps (x2dfd.faceswap2)",
            "other_source": f"AUC {auc('un_swap1'):.3f} / {auc('un_swap2'):.3f} on Unsplash swaps (faceswap / faceswap2)",
            **({"independent_swap": f"AUC {auc('fr_swap3'):.3f} / {auc('un_swap3'):.3f} on faces-real-photos held-out / "
                                    "Unsplash swaps by x2dfd.faceswap3, an implementation never trained or tuned on"}
               if ("fr_swap3", "clean") in rows and ("un_swap3", "clean") in rows else {}),
            "degradation_auc_lost_fr_swap1": lost("fr_swap1"),
            "degradation_auc_lost_fr_swap2": lost("fr_swap2"),
        },
        "calibration_note": "p_fake is temperature-calibrated on validation self-blends; on real swaps it is less well "
                            "calibrated (ECE per set in evaluation.*.ece): read it as a ranking score first",
    }
    return ev, scope


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="the chosen candidate's blend_*.safetensors")
    ap.add_argument("--candidate", required=True, help="its name in --selection")
    ap.add_argument("--selection", type=Path, default=ROOT / "bench" / "out" / "select_blend.json")
    ap.add_argument("--table", type=Path, required=True, help="bench/eval_experts.py's table JSON for this candidate")
    ap.add_argument("--label", required=True, help="the candidate's expert label in --table")
    ap.add_argument("--reproduce", action="append", default=[], metavar="KEY=COMMAND")
    ap.add_argument("--keep-reproduce", action="store_true", help="also keep the shipped record's reproduce commands")
    ap.add_argument("--dest", type=Path, default=WEIGHTS, help="where the weights go (default experts/weights)")
    args = ap.parse_args(argv)

    meta = json.loads(args.weights.with_suffix(".json").read_text())
    selection = json.loads(args.selection.read_text())
    if selection.get("chosen") != args.candidate:
        raise SystemExit(f"ship_blend: {args.selection} chose '{selection.get('chosen')}', not '{args.candidate}'")
    chosen = next(r for r in selection["rows"] if r["candidate"] == args.candidate)
    from x2dfd.media import file_sha256

    if chosen["sha256"] != file_sha256(args.weights):
        raise SystemExit(f"ship_blend: '{args.weights}' is not the file the selection scored ({chosen['weights']})")
    table = json.loads(args.table.read_text())
    evaluation, scope = evaluation_and_scope(table, args.label)

    training = dict(meta.get("training") or {})
    reproduce: dict[str, str] = {}
    earlier: list[dict] = []
    for old in sorted(args.dest.glob("blend_*.json")):  # the shipped record's own selection stays, as history
        old_training = json.loads(old.read_text()).get("training") or {}
        if old_training.get("selection"):
            sel = old_training["selection"]
            earlier += [*sel.pop("earlier", []), {"file": old.name, **sel}]
        if args.keep_reproduce:
            reproduce.update(old_training.get("reproduce") or {})
    for item in args.reproduce:
        key, sep, command = item.partition("=")
        if not sep:
            raise SystemExit(f"ship_blend: --reproduce is KEY=COMMAND, got '{item}'")
        reproduce[key] = command
    training["reproduce"] = reproduce
    training["selection"] = {"rule": selection["rule"], "chosen": args.candidate,
                             "validation_faces": selection["validation_faces"], "conditions": selection["conditions"],
                             **({"validation_swaps": selection["validation_swaps"]} if selection.get("validation_swaps") else {}),
                             "candidates": selection["rows"], "command": "bench/select_blend.py",
                             "earlier": earlier}
    out = {**meta, "training": training, "evaluation": evaluation, "scope": scope}
    for old in args.dest.glob("blend_*.safetensors"):
        if old.name != args.weights.name:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    dest = args.dest / args.weights.name
    shutil.copyfile(args.weights, dest)
    dest.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest} (+ .json): fr_swap1 {evaluation['fr_swap1']['auc']}, un_swap2 {evaluation['un_swap2']['auc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
