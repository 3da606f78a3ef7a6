"""The learning tests of `x2dfd finetune`: assess -> finetune -> explain --adapter must really learn to detect.

Two tests: a visible artifact the model must learn to see (below), and expert evidence the model must learn
to READ from the question (``test_finetune_learns_to_use_the_expert_score``, see its docstring).

Data: project-made images (``finetune.synthetic``): smooth random textures; fakes carry a blended patch
with a seam and the checkerboard of a generator's upsampling. Model: the self-contained tiny LLaVA
(random weights, its own tokenizer), with one adjustment that makes it behave like a trained LM: its
output head is scaled up. A random head with weights of std 0.02 on RMS-normalised states cannot put
more than ~1% on any token (the answer loss floors near ln(vocab) - 1.3), so neither the text nor the
verdict could be learned; a trained model's head is sharp. Everything else goes through the commands
as a user runs them, and the verdict is read from explain's records on held-out images.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from x2dfd.experts import register_expert, unregister_expert
from x2dfd.feature_assessment.assess import main as assess_main
from x2dfd.finetune.synthetic import make_seam_dataset
from x2dfd.finetune.train import main as finetune_main
from x2dfd.explain import main as explain_main
from x2dfd.metrics import roc_auc
from x2dfd.records import ExpertScore
from x2dfd.tiny import build_selfcontained_llava

HEAD_SCALE = 10.0
# A random model answers every cue alike, so its whole ranking is one coin flip: with this seed its cues
# lean the right way (AUC ~0.65 on the training faces) and are not all flagged inverted.
MODEL_SEED = 5


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a loaded 2-core machine makes more threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sharp_tiny_llava(out_dir: Path) -> Path:
    from transformers import AutoModelForImageTextToText

    ckpt = build_selfcontained_llava(out_dir, seed=MODEL_SEED)
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
    model.save_pretrained(ckpt)
    return ckpt


def test_finetune_learns_a_visible_artifact(tmp_path, one_thread):
    t0 = time.perf_counter()
    ckpt = sharp_tiny_llava(tmp_path / "ckpt")
    make_seam_dataset(tmp_path / "train", 64, 64, seed=1)
    held_out = make_seam_dataset(tmp_path / "held_out", 24, 24, seed=2)
    model = ["--model", str(ckpt)]

    assert assess_main([str(tmp_path / "train"), *model, "--out", str(tmp_path / "mfa"), "--no-face-crop",
                        "--only", "boundary", "--per-class", "12",
                        "--bootstrap", "20", "--quiet"]) == 0
    out = tmp_path / "run"
    assert finetune_main([str(tmp_path / "train"), "--ranking", str(tmp_path / "mfa" / "ranking.json"), *model,
                          "--out", str(out), "--no-face-crop", "--no-expert", "--no-rationale", "--top-k", "1",
                          "--allow-uninformative",
                          "--cues-per-answer", "1",
                          "--epochs", "14", "--batch-size", "8", "--lr", "5e-3", "--projector-lr", "5e-4",
                          "--warmup-ratio", "0.05", "--eval-fraction", "0.1", "--no-gradient-checkpointing",
                          "--no-eval-before", "--quiet"]) == 0
    results = tmp_path / "held_out.jsonl"
    assert explain_main([str(tmp_path / "held_out"), *model, "--adapter", str(out), "--no-face-crop", "--no-expert",
                         "--max-new-tokens", "6", "--batch-size", "16", "--out", str(results), "--quiet"]) == 0
    elapsed = time.perf_counter() - t0

    label = {str(p.resolve()): y for p, y in held_out}
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == len(held_out) and all(r["error"] is None for r in rows)
    y = np.array([label[r["path"]] for r in rows])
    auc = roc_auc(y, [r["p_fake"] for r in rows])
    verdict_ok = np.mean([r["explanation"].startswith("This image is " + ("fake" if t else "real"))
                          for r, t in zip(rows, y)])
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"learning test: held-out AUC {auc:.3f}, verdict text right {verdict_ok:.1%}, "
          f"finetune's own held-out AUC {metrics['final']['auc']}, {elapsed:.1f} s")
    assert auc >= 0.95
    assert verdict_ok >= 0.8
    assert all(r["adapter"] == str(out) for r in rows)
    # Time is reported above, never asserted: speed lives in bench/ (bench_finetune.py).


# ------------------------------------------------------------------------------------------------ expert evidence
# The small-model recipe under which a random tiny LLaVA learns to read an expert score from its question
# (measured over seeds 0-2; see test_finetune_learns_to_use_the_expert_score and bench/learn_evidence.py).
EVIDENCE_RECIPE = ["--epochs", "12", "--batch-size", "8", "--lr", "3e-3", "--projector-lr", "5e-4",
                   "--warmup-ratio", "0.05", "--lora-r", "16", "--lora-alpha", "32"]
EVIDENCE_SEED = 0
N_TRAIN, N_HELD_OUT = 150, 48  # per class


def pixel_key(image) -> str:
    """The stub expert's lookup key: the decoded pixels (the same whichever file or crop copy they come from)."""
    image = image.convert("RGB")
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


def grid_score(u: float) -> float:
    """A score on the 10-level grid 0.000, 0.111, ..., 0.999: every digit of the score as the prompt writes it
    ("0.777") names the level, so reading ANY of its digit tokens reads the evidence (see the test's docstring)."""
    return min(9, int(u * 10)) * 0.111


def make_lookup_expert(table: dict[str, float]):
    """An expert class whose p_fake is looked up by image content in ``table`` (None, i.e. N/A, when absent)."""

    class LookupExpert:
        name = "evidence"
        prompt_name = "blending"  # the question reads "the blending score is 0.777", as with the shipped expert
        misses = 0

        @classmethod
        def load(cls, weights=None, device="cpu", **kw):
            return cls()

        def score(self, faces):
            out = []
            for face in faces:
                key = pixel_key(face)
                if key not in table:
                    type(self).misses += 1
                out.append(ExpertScore("evidence", table.get(key)))
            return out

        def localize(self, faces):
            return None

        def info(self):
            return {"name": self.name, "stub": "score looked up by pixel hash"}

    return LookupExpert


def evidence_dataset(root: Path, seed: int) -> tuple[dict[str, tuple[int, float]], dict[str, float]]:
    """Real photos (../shared) as BOTH classes: "fakes" are other real photos, so nothing in the pixels tells the
    classes apart. Each photo's expert score is drawn from Beta(4, 2) for the fake label and Beta(2, 4) for the
    real one, put on the 10-level grid (the stub alone: held-out AUC ~0.9-0.97). Images are resized to the tiny
    model's 32 px and saved as PNG, so the pixels every stage decodes are the ones hashed here."""
    from PIL import Image

    from tests.conftest import shared_path

    photos = sorted(shared_path("data", "faces-real-photos", "real").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(photos))[: 2 * (N_TRAIN + N_HELD_OUT)]
    labels, table = {}, {}
    for i, idx in enumerate(pick):
        split = "train" if i < 2 * N_TRAIN else "held_out"
        y = i % 2
        folder = root / split / ("fake" if y else "real")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(photos[idx]).convert("RGB").resize((32, 32), Image.BICUBIC)
        key = pixel_key(image)
        if key in table:  # a duplicate photo in the folder: one label per picture
            continue
        path = folder / f"{i:04d}.png"
        image.save(path)
        score = grid_score(float(rng.beta(4.0, 2.0) if y else rng.beta(2.0, 4.0)))
        table[key] = score
        labels[str(path.resolve())] = (y, score)
    return labels, table


def test_finetune_learns_to_use_the_expert_score(tmp_path, one_thread):
    """Proof that fine-tuning learns to USE the evidence in its question (X2-DFD's Weak Feature Supplementing).

    Fakes and reals are all real photos (indistinguishable by construction); only the stub expert's score,
    written into the question by finetune and by explain, separates them. Checked on held-out photos:
    the fine-tuned model's AUC is near the stub's own AUC, the base model is at chance, and the same adapter
    with the scores shuffled across photos at explain time (the control) falls back to chance: the model
    reads the score, not the pixels.

    Small-model recipe (EVIDENCE_RECIPE) and why it differs from X2-DFD's (lr 2e-4, 1 epoch on a pretrained
    7B LLM that already reads numbers): this model is random (2 text layers of width 64, its own tokenizer)
    and must learn to read a number from scratch, so it needs ~400 steps at lr 3e-3 (head scaled as above;
    X2-DFD's lr 2e-4 for 1 epoch leaves it at chance here: held-out AUC 0.56, 0.61 after 8 epochs).
    The stub writes its score on a 10-level grid (0.000, 0.111, ..., 0.999): every digit token then carries
    the level, and a head that attends to digit tokens at all reads it. With arbitrary 3-digit scores
    ("0.549": the tokenizer splits the digits, only the first carries most of the evidence) the same model
    must learn to attend to one position ~45 tokens back; measured with Beta(4, 2)/Beta(2, 4) scores it stayed
    at chance (held-out AUC 0.47-0.67 over lr 2e-3..1e-2, 3-60 epochs, 128-600 photos, LoRA r 2-64, width
    128 / 4 layers, the shuffled control as high). A pretrained LLM reads such numbers; a random tiny one does
    not in a test's time. The shipped blend expert's scores on real swaps are easier (many fakes at "1.000",
    reals at "0.0x"-"0.2x"): bench/learn_evidence.py reports that figure, with the same controls.
    """
    t0 = time.perf_counter()
    labels, table = evidence_dataset(tmp_path, EVIDENCE_SEED)
    expert = make_lookup_expert(table)
    register_expert("evidence", expert, overwrite=True)
    try:
        ckpt = sharp_tiny_llava(tmp_path / "ckpt")
        model = ["--model", str(ckpt)]
        # A random model answers every cue alike, so on indistinguishable classes every cue may come out
        # "inverted" (finetune then refuses the ranking); the cue ranking comes from the seam set, where this
        # model's boundary cue leans the right way (the visible-artifact test above). The cues are not what is
        # tested here: --cue-order rank states the ranking's top cue in every answer (--allow-uninformative: a
        # random model's cue AUC on 12 faces per class has a CI that covers 0.5).
        make_seam_dataset(tmp_path / "seam", 64, 64, seed=1)
        assert assess_main([str(tmp_path / "seam"), *model, "--out", str(tmp_path / "mfa"), "--no-face-crop",
                            "--only", "boundary", "--per-class", "12", "--bootstrap", "20", "--quiet"]) == 0
        out = tmp_path / "run"
        assert finetune_main([str(tmp_path / "train"), "--ranking", str(tmp_path / "mfa"), *model, "--out", str(out),
                              "--no-face-crop", "--expert", "evidence", "--no-rationale", "--top-k", "1",
                              "--allow-uninformative",
                              "--cues-per-answer", "1", "--cue-order", "rank", *EVIDENCE_RECIPE,
                              "--eval-fraction", "0.1", "--seed", str(EVIDENCE_SEED), "--no-gradient-checkpointing",
                              "--no-eval-before", "--quiet"]) == 0
        train_rows = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
        assert all(f"the blending score is {r['experts']['evidence']:.3f} " in r["question"] for r in train_rows)

        def held_out_auc(name: str, adapter: bool = True) -> tuple[float, float, list[dict]]:
            results = tmp_path / f"{name}.jsonl"
            assert explain_main([str(tmp_path / "held_out"), *model, *(["--adapter", str(out)] if adapter else []),
                                 "--no-face-crop", "--expert", "evidence", "--max-new-tokens", "0",
                                 "--batch-size", "16", "--out", str(results), "--quiet"]) == 0
            rows = [json.loads(line) for line in results.read_text().splitlines()]
            assert len(rows) == sum(1 for p in labels if "/held_out/" in p) and all(r["error"] is None for r in rows)
            y = np.array([labels[r["path"]][0] for r in rows])
            truth = np.array([labels[r["path"]][1] for r in rows])
            return roc_auc(y, [r["p_fake"] for r in rows]), roc_auc(y, truth), rows

        auc_tuned, auc_expert, rows = held_out_auc("tuned")
        # the score explain put in each question is the stub's score of that photo
        assert all(r["experts"]["evidence"] == pytest.approx(labels[r["path"]][1], abs=1e-6) for r in rows)
        auc_base, _, _ = held_out_auc("base", adapter=False)
        # control: the same adapter, every photo given another photo's score
        keys = sorted(table)
        shuffled = np.random.default_rng(99).permutation(len(keys))
        table.update({k: table[keys[j]] for k, j in zip(keys, shuffled)})
        auc_control, _, _ = held_out_auc("control")
        assert expert.misses == 0  # every photo found its score (the pixels hashed are the pixels decoded)
    finally:
        unregister_expert("evidence")
    print(f"evidence test: held-out AUC fine-tuned {auc_tuned:.3f}, stub expert {auc_expert:.3f}, base {auc_base:.3f}, "
          f"shuffled-score control {auc_control:.3f}, {time.perf_counter() - t0:.1f} s")
    # Margins from seeds 0-2 (~95 held-out photos: chance alone spreads an AUC by ~0.06): fine-tuned 0.83-0.94,
    # stub 0.88-0.95, base 0.44-0.57, control 0.49-0.61.
    assert auc_tuned >= 0.75
    assert auc_tuned >= auc_expert - 0.1
    assert abs(auc_base - 0.5) <= 0.15
    assert auc_control <= 0.7 and auc_tuned - auc_control >= 0.15
