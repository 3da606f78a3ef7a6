"""The installed package: one import name, package data in the wheel, and the Python API."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ("experts", "finetune", "feature_assessment", "prompts", "demo")
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "faces-real-photos" / "real"


# ------------------------------------------------------------------------------------------ one import name
def test_no_module_imports_a_stage_folder_by_its_bare_name():
    """Inside the repository `import experts` would work (the folder is on sys.path); installed it must not."""
    offenders = []
    for folder in ("x2dfd", *STAGES, "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in STAGES]
    assert not offenders, offenders


def test_decoy_modules_in_the_working_folder_break_nothing(tmp_path):
    """A user's own experts.py / prompts.py / demo.py beside them: `python -m x2dfd` still runs ours, and
    after install there is no top-level `experts` to import."""
    for name in ("experts", "prompts", "demo", "finetune", "feature_assessment"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('decoy {name}.py was imported')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, "-m", "x2dfd", "expert", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "blend" in res.stdout and "decoy" not in res.stdout + res.stderr
    code = ("import x2dfd.experts, x2dfd.prompts, x2dfd.demo, x2dfd.finetune, x2dfd.feature_assessment, os\n"
            "print(os.path.dirname(x2dfd.experts.__file__))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) != tmp_path
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in STAGES:
        res = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=empty, env=env, capture_output=True, text=True)
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, name


def test_wheel_holds_one_import_name_and_its_data(tmp_path):
    """A built wheel: every stage under x2dfd/, prompts, cue bank, templates and expert weights inside."""
    import shutil

    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, never into the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "test-artifacts",
                                                             "__pycache__", ".whl", ".gpu_shared", "out"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel offline here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    [wheel] = tmp_path.glob("x2dfd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"x2dfd"}, tops
    from x2dfd.experts.blend import DEFAULT_WEIGHTS

    shipped = f"x2dfd/experts/weights/{DEFAULT_WEIGHTS.stem}"
    for needed in ("x2dfd/experts/blend.py", f"{shipped}.safetensors", f"{shipped}.json", "x2dfd/prompts/explain.jinja",
                   "x2dfd/prompts/cues.yaml", "x2dfd/feature_assessment/scoring.py", "x2dfd/finetune/train.py",
                   "x2dfd/demo/app.py", "x2dfd/templates/report.html.jinja",
                   "x2dfd/prompts/presets/x2dfd-release.json", "x2dfd/experts/swinv2.py"):
        assert needed in names, needed


def test_import_x2dfd_is_light_and_exports_the_api():
    code = ("import sys, x2dfd\n"
            "assert 'torch' not in sys.modules, 'torch imported by import x2dfd'\n"
            "from x2dfd import load_detector, Detector, Record, PipelineOptions, MLLMOptions, X2DFDError\n"
            "print(sorted(x2dfd.__all__))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "load_detector" in res.stdout


# ------------------------------------------------------------------------------------------------ Python API
@pytest.fixture(scope="module")
def photos():
    if not SHARED_PHOTOS.is_dir():
        pytest.skip("../shared is absent")
    return sorted(SHARED_PHOTOS.glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def detector():
    from x2dfd import load_detector

    return load_detector(mllm=None, batch_size=2)


def test_api_takes_paths_pil_and_numpy_and_returns_the_cli_records(detector, photos, tmp_path):
    from x2dfd import Record
    from x2dfd.explain import main as explain_main

    pil = Image.open(photos[1])
    arr = np.asarray(pil.convert("RGB"))
    records = detector.explain([str(photos[0]), photos[1], pil, arr, ("named", arr), arr / 255.0])
    assert all(isinstance(r, Record) for r in records) and len(records) == 6
    assert [r.path for r in records] == [str(photos[0]), str(photos[1]), "<memory:2>", "<memory:3>", "named",
                                         "<memory:5>"]
    assert all(r.error is None and r.mode == "expert-only" and r.label in ("real", "fake") for r in records)
    # The same picture from a file, a PIL image and an array: the same verdict and the same pixel hash. p_fake
    # agrees to its 6th decimal: a face's logit moves by one float bit (1.2e-7) with its position in a batch
    # (oneDNN's blocking), which can flip the last rounded digit.
    assert len({r.label for r in records[1:5]}) == 1
    assert [r.p_fake for r in records[2:5]] == pytest.approx([records[1].p_fake] * 3, abs=1.5e-6)
    assert records[2].sha256 == records[3].sha256 and records[2].sha256 != records[1].sha256  # file bytes vs pixels
    assert records[5].p_fake == pytest.approx(records[3].p_fake, abs=1e-6)  # float [0, 1] == uint8 / 255
    # ... and the CLI writes the very same record for the file.
    out = tmp_path / "cli.jsonl"
    explain_main([str(photos[0]), "--mllm", "none", "--out", str(out), "--quiet"])
    cli = Record.from_dict(json.loads([ln for ln in out.read_text(encoding="utf-8").split("\n") if ln][-1]))
    api = records[0]
    assert (cli.path, cli.sha256, cli.label, cli.p_fake, cli.experts, cli.face) == (
        api.path, api.sha256, api.label, api.p_fake, api.experts, api.face)


def test_api_bad_inputs_are_records_not_crashes(detector):
    records = detector.explain([np.zeros((4, 4, 7), np.uint8), object(), np.full((8, 8), 2.0), "missing.jpg"])
    assert [r.label for r in records] == ["undetermined"] * 4
    assert "expected HxW" in records[0].error and "give a path, a PIL image" in records[1].error
    assert "outside [0, 1]" in records[2].error and "missing.jpg" in records[3].error
    one = detector.explain_one(Image.new("RGB", (64, 64), "gray"))  # no face: a record, one line
    assert one.label == "undetermined" and one.error and "\n" not in one.error


def test_api_options_are_the_cli_options():
    from x2dfd import X2DFDError, load_detector

    with pytest.raises(X2DFDError, match="unknown option.*colour.*Available:.*batch_size"):
        load_detector(mllm=None, colour="red")
    with pytest.raises(X2DFDError, match="--batch-size must be >= 1"):
        load_detector(mllm=None, batch_size=0)
    with pytest.raises(X2DFDError, match="mllm="):
        load_detector(mllm="sometimes")
    with pytest.raises(X2DFDError, match="nothing could give a verdict"):
        load_detector(mllm=None, experts=[])


def test_api_with_an_mllm_checkpoint_dir(selfcontained_llava, photos):
    """model=DIR loads through the same loader as `--model DIR`; the record carries verdict and text."""
    from x2dfd import load_detector

    det = load_detector(model=str(selfcontained_llava), experts=[], max_new_tokens=4, device="cpu")
    rec = det.explain_one(Image.open(photos[0]))
    assert rec.mode == "mllm" and rec.model == str(selfcontained_llava) and 0.0 <= rec.p_fake <= 1.0
    assert rec.explanation is not None and rec.explanation.startswith("This image is")


# ------------------------------------------------------------------------------------------------ the lock
def test_every_dependency_is_pinned_in_the_lock():
    """constraints.txt (made by `bash .ci/lock`) pins every requirement of pyproject.toml, extras included,
    at a version inside the range pyproject allows."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == canonicalize_name(project["name"]):  # x2dfd[metrics] inside `test`: its extra is checked itself
            continue
        assert name in pins, f"{req.name} is not in constraints.txt: run `bash .ci/lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"


# ------------------------------------------------------------------------------------------------ README truth
def test_readme_main_job_runs_as_written(tmp_path):
    """The README's main-job line, run as written in a folder holding `photos/`: offline it stops with one
    line that names the way forward (`--mllm none`); with `--mllm none` added it explains every photo."""
    import re

    if not SHARED_PHOTOS.is_dir():
        pytest.skip("../shared is absent")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The three commands\n\n```bash\n(.*?)```", readme, re.S).group(1)
    main_job = [ln for ln in block.splitlines() if ln and not ln.startswith("#")][1]
    (tmp_path / "photos").mkdir()
    for src in sorted(SHARED_PHOTOS.glob("*.jpg"))[:2]:
        (tmp_path / "photos" / src.name).write_bytes(src.read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    argv = main_job.split()
    assert argv[0] == "x2dfd"
    cmd = [sys.executable, "-m", "x2dfd", *argv[1:]]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "--mllm none" in lines[0] and "llava-hf/llava-1.5-7b-hf" in lines[0]
    res = subprocess.run([*cmd, "--mllm", "none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text(encoding="utf-8").split("\n") if ln]
    assert sorted(Path(r["path"]).name for r in rows if "path" in r) == sorted(p.name for p in (tmp_path / "photos").iterdir())
