"""The `x2dfd` command line: help, usage errors (one line, exit 2), offline model errors, README truth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "x2dfd", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_help_lists_commands_without_importing_torch():
    code = "import sys, x2dfd.cli as c; c.main(['--help']); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "explain" in out and "assess" in out and out.strip().endswith("NO-TORCH")


def test_every_command_help_is_fast_and_torch_free():
    from x2dfd.cli import COMMANDS

    for name in COMMANDS:
        code = ("import sys, io, contextlib, x2dfd.cli as c\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                f"    try: c.main([{name!r}, '--help'])\n"
                "    except SystemExit: pass\n"
                "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().endswith("NO-TORCH"), name


def test_explain_help_comes_from_field_docstrings():
    res = run_cli("explain", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for flag in ("--model", "--adapter", "--out", "--batch-size", "--max-new-tokens", "--device", "--load-in-4bit",
                 "--load-in-8bit", "--no-face-crop", "--all-faces", "--frames", "--aggregate", "--expert", "--no-expert",
                 "--mllm"):
        assert flag in text, flag
    assert "Quantize the MLLM to 4-bit NF4" in text
    assert "default: llava-hf/llava-1.5-7b-hf" in text


def test_unknown_command_is_one_line():
    res = run_cli("explian")
    assert res.returncode == 2
    assert res.stderr.strip() == "x2dfd: unknown command 'explian'. Available: " + ", ".join(
        __import__("x2dfd.cli", fromlist=["COMMANDS"]).COMMANDS) + "."


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_default_model_offline_gives_one_line_with_the_fix(tmp_path):
    img = tmp_path / "face.png"
    img.write_bytes(b"not really an image")
    res = run_cli("explain", str(img), env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2
    line = _one_error_line(res)
    assert "llava-hf/llava-1.5-7b-hf" in line and "--model DIR" in line and str(tmp_path / "hf") in line


def test_bad_model_path_and_bad_flags(tmp_path):
    img = tmp_path / "face.png"
    img.write_bytes(b"x")
    res = run_cli("explain", str(img), "--model", str(tmp_path / "missing-model"))
    assert res.returncode == 2 and "no such directory" in _one_error_line(res)
    res = run_cli("explain", str(img), "--batch-size", "0")
    assert res.returncode == 2 and "--batch-size must be >= 1" in res.stderr
    res = run_cli("explain", str(tmp_path / "nothing-here.jpg"))
    assert res.returncode == 2 and "does not exist" in _one_error_line(res)


def test_readme_commands_are_the_ones_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = re.search(r"## The three commands\n\n```bash\n(.*?)```", readme, re.S).group(1)
    commands = [ln for ln in block.splitlines() if ln and not ln.startswith("#")]
    install, main_job, tests = commands
    assert install in ci and tests in ci
    assert main_job.startswith("x2dfd explain ")
