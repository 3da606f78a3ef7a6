"""bench/gpu_suite.sh: ``--tiny`` runs every part on CPU end to end and writes the JSON + markdown with all parts;
the report keeps rows measured before a part timed out, and the arithmetic limit is the roofline it claims."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_suite.sh"
PARTS = ("machine", "build", "explain", "assess", "lora", "qlora", "load-4bit", "load-8bit", "explain-static", "release")


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", REPO / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_is_bash_clean():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_limit_and_report_rows_without_running_anything():
    g = _suite()
    m = {"params": 7_063_427_072, "embedding": 131_334_144, "lm_head": 131_334_144, "language_model": 6_607_605_760,
         "language_model_linear": 6_476_005_376, "vision": 303_507_456, "projector": 20_979_712, "text_layers": 32,
         "text_width": 4096, "text_intermediate": 11008, "attention_width": 4096, "kv_width": 4096, "vocab": 32064,
         "vision_layers": 24, "vision_width": 1024, "vision_tokens": 577, "prompt_tokens": 653, "image_tokens": 576,
         "architecture": "LlavaForConditionalGeneration"}
    peaks = g.peaks_for({"gpu": "NVIDIA H100 80GB HBM3"}, {"device": "cuda", "peak_override": {"tflops": None, "tbps": None}})
    assert (peaks["bf16_dense_tflops"], peaks["hbm_tbps"]) == (989.0, 3.35)
    assert g.peaks_for({"gpu": "NVIDIA H200"}, {"device": "cuda", "peak_override": {"tflops": None, "tbps": None}})["hbm_tbps"] == 4.8
    lim1 = g.explain_limit(m, peaks, 1, 653, 64, 2)
    lim32 = g.explain_limit(m, peaks, 32, 653, 64, 2)
    # decode at batch 1 reads ~13.2 GB of weights per step: ~4 ms at 3.35 TB/s; prefill ~2 * 6.5e9 * 653 FLOPs
    assert 3.8 < lim1["decode_ms_per_step"] < 4.3 and lim1["decode_bound"] == "bandwidth"
    assert 8.0e3 < lim1["prefill_gflop_per_face"] < 9.5e3
    assert lim32["faces_per_s"] > 5 * lim1["faces_per_s"]  # batching amortizes the weight reads

    spec = g.make_spec(g.parse_args(["--tiny", "--model", str(REPO)]))
    explain_rows = [{"batch_size": 1, "faces_per_s": 2.0, "wall_s": 0.5, "prompt_s": 0.01, "prefill_s": 0.05,
                     "decode_s": 0.44, "decode_ms_per_step": 7.0, "new_tokens_max": 64, "memory": None}]
    report = {"tiny": False, "created": "now", "load_average_start": [0.1, 0.1, 0.1], "model": m,
              "machine": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gb": 79.1, "gpu_free_gb": 78.0, "cpus": 16},
              "peaks": peaks, "settings": {**spec, "dtype": "bfloat16", "device": "cuda"},
              "parts": {"explain": {"status": "timeout", "error": "timed out after 150 s (killed)",
                                    "partial": {"prompt_tokens": 653, "max_new_tokens": 64, "rows": explain_rows}},
                        "lora": {"status": "error", "error": "exit 1: RuntimeError: boom"},
                        "release": {"status": "ok", "error": None, "result": {
                            "layers": 32, "r": 16, "alpha": 32, "experts": True, "convert_s": 8.5, "release_mb": 538.0,
                            "converted_mb": 537.8, "verify_layers": 4, "max_abs_logit_diff": 0.0, "ok": True}}}}
    rows = g.table_rows(report)
    explain = [r for r in rows if r["part"] == "explain"]
    assert [r["status"] for r in explain] == ["ok", "timeout"]  # the finished batch size survives the timeout
    assert "faces/s" in explain[0]["limit"] and "measured" in explain[0]["limit"]
    assert any(r["part"] == "lora" and "boom" in r["detail"] for r in rows)
    md = g.render_markdown(report, rows)
    assert "| explain |" in md and "32 layers, r=16, with experts" in md and "max abs diff 0 (ok)" in md


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path):
    if not (REPO.parent / "shared" / "checkpoints" / "llava-1.5-7b-hf" / "config.json").is_file():
        pytest.skip("../shared/checkpoints/llava-1.5-7b-hf is not present")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = sys.executable
    out = tmp_path / "out"
    # ~1-2 min; the generous per-part timeouts only matter on a CPU shared with other jobs
    timeouts = ",".join(f"{p}=300" for p in PARTS)
    res = subprocess.run(["bash", str(SCRIPT), "--tiny", "--out", str(out), "--work-dir", str(tmp_path),
                          "--budget-s", "1200", "--timeouts", timeouts],
                         capture_output=True, text=True, env=env, timeout=1500, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.json", "gpu_suite.log", "gpu_suite.md"]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["complete"] and report["tiny"]
    assert set(PARTS) <= set(report["parts"])
    for name in ("machine", "build", "explain", "assess", "lora", "explain-static"):
        assert report["parts"][name]["status"] == "ok", (name, report["parts"][name])
    has_bnb = bool(report["machine"].get("bitsandbytes"))
    for name in ("qlora", "load-4bit", "load-8bit"):  # bitsandbytes: ok where importable, else skipped with a reason
        part = report["parts"][name]
        assert part["status"] in (("ok", "error") if has_bnb else ("skipped",)), (name, part)
        assert part["status"] == "ok" or part["error"]
    release = report["parts"]["release"]
    assert release["status"] == "ok" and release["result"]["layers"] == 2 and release["result"]["convert_s"] > 0
    explain = report["parts"]["explain"]["result"]
    assert [r["batch_size"] for r in explain["rows"]] == [1, 4, 8]
    assert all(r["new_tokens_max"] == explain["max_new_tokens"] for r in explain["rows"])  # nothing stopped early
    static = report["parts"]["explain-static"]["result"]  # --static-cache at the largest batch, after a full warm-up
    assert static["static_cache"] and [r["batch_size"] for r in static["rows"]] == [8]
    assert static["rows"][0]["warmup_s"] > 0 and static["rows"][0]["faces_per_s"] > 0
    assert static["rows"][0]["p_fake_first"] == pytest.approx(explain["rows"][-1]["p_fake_first"], abs=1e-5)
    assert report["parts"]["assess"]["result"]["max_abs_diff_p_yes"] < 1e-4
    md = (out / "gpu_suite.md").read_text()
    for name in PARTS:
        assert f"| {name} |" in md, name
    assert "2 layers, r=16, no experts" in md
    assert not list(tmp_path.glob("x2dfd-gpu-suite-*"))  # the built checkpoint is removed
