"""Rank cues by how well the MLLM's P(yes) separates fake from real faces; per-region summary; chart.

    rows = rank_cues(cues, labels, p_yes)          # p_yes: (n_images, n_cues), labels: 0 real / 1 fake
    regions = summarize_regions(cues, labels, p_yes, rows)
    write_csv(rows, "ranking.csv"); plot_ranking(rows, "ranking.png")

Per cue: ROC AUC of P(yes) for fake-vs-real (threshold-free; the ranking key by default), balanced
accuracy at P(yes) = 0.5 (X2-DFD's MFA metric: "yes" = fake), both with stratified percentile
bootstrap CIs (``x2dfd.metrics.bootstrap_ci``), the mean P(yes) per class, and the cue's decision
``threshold``: the P(yes) cut that maximises Youden's J (TPR - FPR, fake = positive), placed halfway
between the two neighbouring scores (a face is on the fake side when P(yes) > threshold, on the real
side when P(yes) < threshold; ``x2dfd finetune`` states a cue for a face only on the side its label
is). A cue whose "yes"
points to REAL faces (AUC < 0.5) is kept and flagged ``inverted``: its question is informative
but worded the wrong way round for explanations. Other flags: ``uninformative`` (the AUC CI holds
0.5), ``always_yes`` / ``always_no`` (the 0.5 threshold puts every face on one side, so the
balanced accuracy is 0.5 whatever the AUC) and ``constant`` (identical P(yes) for every face).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from x2dfd.metrics import bootstrap_ci, roc_auc, roc_curve

RANK_KEYS = ("auc", "balanced_accuracy")
CSV_COLUMNS = ("rank", "id", "region", "auc", "auc_lo", "auc_hi", "balanced_accuracy", "bacc_lo", "bacc_hi",
               "mean_p_yes_real", "mean_p_yes_fake", "yes_rate", "n_real", "n_fake", "flags", "question", "threshold")


def balanced_accuracy(y: np.ndarray, p_yes: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of the recall on fakes (P(yes) >= threshold) and on reals (P(yes) < threshold)."""
    y = np.asarray(y)
    p_yes = np.asarray(p_yes)
    tpr = float(np.mean(p_yes[y == 1] >= threshold))
    tnr = float(np.mean(p_yes[y == 0] < threshold))
    return 0.5 * (tpr + tnr)


def youden_threshold(y: np.ndarray, p_yes: np.ndarray) -> tuple[float, float]:
    """``(threshold, J)``: the cut of P(yes) with the largest TPR - FPR (fake = positive), halfway between the
    lowest score called fake and the next lower score (ties of J: the cut nearest 0.5). A face with P(yes) above
    it is on the fake side, below it on the real side; no scored face sits on it."""
    fpr, tpr, thr = roc_curve(y, p_yes)
    j = tpr - fpr
    cuts = []
    for i in np.flatnonzero(j == j.max()):
        upper = float(thr[i]) if np.isfinite(thr[i]) else 1.0  # i = 0: nothing called fake (cut above every score)
        lower = float(thr[i + 1]) if i + 1 < len(thr) else 0.0  # last point: everything called fake
        cuts.append((upper + lower) / 2)
    return min(cuts, key=lambda c: (abs(c - 0.5), c)), float(j.max())


def _round(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))


def cue_metrics(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Metrics and flags of one cue over the faces that have a score for it."""
    keep = np.isfinite(p)
    y, p = np.asarray(y)[keep].astype(int), np.asarray(p, dtype=np.float64)[keep]
    auc, auc_lo, auc_hi = bootstrap_ci(roc_auc, y, p, n=n_boot, seed=seed, alpha=alpha)
    bacc, bacc_lo, bacc_hi = bootstrap_ci(balanced_accuracy, y, p, n=n_boot, seed=seed, alpha=alpha)
    yes_rate = float(np.mean(p >= 0.5))
    threshold, youden_j = youden_threshold(y, p)
    flags = []
    if auc < 0.5:
        flags.append("inverted")
    if auc_lo <= 0.5 <= auc_hi:
        flags.append("uninformative")
    if yes_rate == 1.0:
        flags.append("always_yes")
    elif yes_rate == 0.0:
        flags.append("always_no")
    if np.ptp(p) == 0:
        flags.append("constant")
    return {
        "auc": _round(auc), "auc_ci": [_round(auc_lo), _round(auc_hi)],
        "balanced_accuracy": _round(bacc), "balanced_accuracy_ci": [_round(bacc_lo), _round(bacc_hi)],
        "mean_p_yes_real": _round(p[y == 0].mean()), "mean_p_yes_fake": _round(p[y == 1].mean()),
        "yes_rate": _round(yes_rate), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()), "flags": flags,
        "threshold": _round(threshold), "youden_j": _round(youden_j),
    }


def rank_cues(cues: Sequence, labels: Sequence[int], p_yes: np.ndarray, rank_by: str = "auc", n_boot: int = 1000,
              seed: int = 0, alpha: float = 0.05) -> list[dict]:
    """One row per cue, best first (ties broken by id); ``rank`` starts at 1."""
    if rank_by not in RANK_KEYS:
        raise ValueError(f"rank_by must be one of {RANK_KEYS}, got {rank_by!r}")
    p_yes = np.asarray(p_yes, dtype=np.float64)
    labels = np.asarray(labels)
    if p_yes.shape != (len(labels), len(cues)):
        raise ValueError(f"p_yes has shape {p_yes.shape}, expected ({len(labels)}, {len(cues)})")
    rows = []
    for j, cue in enumerate(cues):
        rows.append({"id": cue.id, "region": cue.region, "question": cue.question, "present": cue.present,
                     "absent": cue.absent, **cue_metrics(labels, p_yes[:, j], n_boot=n_boot, seed=seed, alpha=alpha)})
    rows.sort(key=lambda r: (-r[rank_by], -r["auc"], r["id"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def summarize_regions(cues: Sequence, labels: Sequence[int], p_yes: np.ndarray, rows: list[dict],
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[dict]:
    """Per region: its cues' AUCs (mean, best, worst, inverted count) and the AUC of the region's mean
    P(yes) per face (how well the region as a whole separates), best region first."""
    by_id = {r["id"]: r for r in rows}
    labels = np.asarray(labels)
    out = []
    for region in dict.fromkeys(c.region for c in cues):
        cols = [j for j, c in enumerate(cues) if c.region == region]
        region_rows = sorted((by_id[cues[j].id] for j in cols), key=lambda r: r["rank"])
        aucs = [r["auc"] for r in region_rows]
        mean_p = np.nanmean(np.asarray(p_yes, dtype=np.float64)[:, cols], axis=1)
        keep = np.isfinite(mean_p)
        auc, lo, hi = bootstrap_ci(roc_auc, labels[keep], mean_p[keep], n=n_boot, seed=seed, alpha=alpha)
        out.append({
            "region": region, "n_cues": len(cols), "mean_cue_auc": _round(np.mean(aucs)),
            "best_cue": region_rows[0]["id"], "best_cue_auc": region_rows[0]["auc"],
            "worst_cue": region_rows[-1]["id"], "worst_cue_auc": region_rows[-1]["auc"],
            "n_inverted": sum("inverted" in r["flags"] for r in region_rows),
            "region_auc": _round(auc), "region_auc_ci": [_round(lo), _round(hi)],
        })
    out.sort(key=lambda r: (-r["region_auc"], r["region"]))
    return out


def write_csv(rows: list[dict], path: str | Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r["rank"], r["id"], r["region"], r["auc"], *r["auc_ci"], r["balanced_accuracy"],
                             *r["balanced_accuracy_ci"], r["mean_p_yes_real"], r["mean_p_yes_fake"], r["yes_rate"],
                             r["n_real"], r["n_fake"], ";".join(r["flags"]), r["question"], r["threshold"]])


def plot_ranking(rows: list[dict], path: str | Path, top: int = 15, title: str = "", ci: float = 0.95) -> None:
    """Horizontal bars of the AUC (with its CI) of the ``top`` best and ``top`` worst cues."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows if len(rows) <= 2 * top else rows[:top] + rows[-top:]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(shown) + 1.6))
    y = np.arange(len(shown))[::-1]
    auc = np.array([r["auc"] for r in shown])
    err = np.array([[r["auc"] - r["auc_ci"][0], r["auc_ci"][1] - r["auc"]] for r in shown]).T
    colors = ["#95a5a6" if "uninformative" in r["flags"] else "#c0392b" if "inverted" in r["flags"] else "#2471a3"
              for r in shown]
    ax.barh(y, auc - 0.5, left=0.5, color=colors, xerr=err, error_kw={"elinewidth": 0.8, "ecolor": "#333"})
    ax.axvline(0.5, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{r['rank']}. {r['id']}" for r in shown], fontsize=7)
    if len(rows) > 2 * top:
        ax.axhline(y[top - 1] - 0.5, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"AUC of P(yes), fake vs real (whiskers: {round(ci * 100)}% bootstrap CI; blue: yes = fake, "
                  "red: yes = real, grey: CI holds 0.5)", fontsize=8)
    ax.set_title(title or f"Cue ranking: top {min(top, len(rows))} and bottom {min(top, max(0, len(rows) - top))}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
