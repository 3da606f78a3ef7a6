"""Issue 11 points 1-7 and issue 14's newcomer items: output files that are not ours, locks, run configs,
OS write failures, "\\n"-only JSONL, exit codes, non-regular inputs, terminal-safe text, fast --model errors.

Everything runs in-process through ``x2dfd.cli.main`` with a stub expert and ``--no-face-crop`` (no model,
no face detector), except where a second process is the point (the lock holder, torch-free start-up).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.cli import main as cli_main
from x2dfd.records import scan_jsonl
from tests.stubs import brightness_expert

REPO = Path(__file__).resolve().parents[1]


_Bright = brightness_expert("bright", "brightness", heatmap="ramp")


@pytest.fixture(autouse=True)
def bright():
    from x2dfd import experts

    experts.register_expert("bright", _Bright, overwrite=True)
    yield
    experts.unregister_expert("bright")


def _images(folder: Path, n: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(prefix) + n)
    out = []
    for i in range(n):
        p = folder / f"{prefix}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


BASE = ["--mllm", "none", "--expert", "bright", "--no-face-crop", "--quiet"]


def explain(*args: str) -> int:
    return cli_main(["explain", *map(str, args), *BASE])


def _last_err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().split(b"\n") if x.strip()]


# ---------------------------------------------------------------------------------------------- 1: not ours
@pytest.mark.parametrize("content", [b"hello\n", b"\x89PNG\r\n\x1a\n\x00\x00", b'{"a": 1}\n{"b": 2}\n', b"\n\n"])
def test_a_file_that_is_not_ours_is_never_modified(tmp_path, capsys, content):
    [img] = _images(tmp_path / "in", 1)
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content)
    assert explain(img, "--out", out) == 2
    line = _last_err_line(capsys)
    assert "is not an x2dfd JSONL file" in line and "notes.jsonl" in line and "new --out" in line
    assert out.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.jsonl"]  # no config, no lock left


def test_a_config_that_is_not_ours_is_never_overwritten(tmp_path, capsys):
    [img] = _images(tmp_path / "in", 1)
    out = tmp_path / "results.jsonl"
    conf = tmp_path / "results.config.json"
    conf.write_text("my own notes")
    assert explain(img, "--out", out) == 2
    assert "not an x2dfd run config" in _last_err_line(capsys) and conf.read_text() == "my own notes"


def test_corrupt_middle_lines_are_kept_and_reported_torn_tail_repaired(tmp_path, capsys):
    imgs = _images(tmp_path / "in", 4)
    out = tmp_path / "res.jsonl"
    assert explain(imgs[0], imgs[1], imgs[2], "--out", out) == 0
    lines = out.read_bytes().split(b"\n")
    damaged = lines[0] + b"\n" + b"garbage {not json\n" + b"\n" + lines[1] + b"\n" + lines[2] + b"\n" + lines[2][:30]
    out.write_bytes(damaged)
    capsys.readouterr()
    assert cli_main(["explain", str(tmp_path / "in"), "--out", str(out), *BASE[:-1]]) == 0
    err = capsys.readouterr().err
    assert "line 2 is not a record" in err and "line 3 is not a record (blank line)" in err
    assert "removed a torn last line" in err and "resuming: 3 inputs already" in err
    data = out.read_bytes()
    assert data.startswith(lines[0] + b"\ngarbage {not json\n\n" + lines[1] + b"\n" + lines[2] + b"\n")
    scan = scan_jsonl(out)
    assert [r.path for r in scan.records] == [str(p) for p in imgs]  # nothing after the bad line was dropped
    assert scan.bad_lines == [(2, "not JSON (Expecting value at column 1)"), (3, "blank line")] and not scan.torn


def test_a_last_record_without_its_newline_is_kept(tmp_path, capsys):
    imgs = _images(tmp_path / "in", 2)
    out = tmp_path / "res.jsonl"
    assert explain(imgs[0], "--out", out) == 0
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    assert explain(imgs[0], imgs[1], "--out", out) == 0
    assert [r["path"] for r in _rows(out)] == [str(p) for p in imgs] and out.read_bytes().count(b"\n") == 2


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from x2dfd.explain import OutputLock
    lock = OutputLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_one_out_refuses_while_the_first_holds_the_lock(tmp_path, capsys):
    [img] = _images(tmp_path / "in", 1)
    out = tmp_path / "res.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert explain(img, "--out", out) == 5
        line = _last_err_line(capsys)
        assert f"is being written by another x2dfd run (pid {holder.pid})" in line and "another --out" in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the kernel dropped its lock, the stale lock file is taken over, and removed at the end
    assert (tmp_path / "res.jsonl.lock").exists()
    assert explain(img, "--out", out) == 0
    assert not (tmp_path / "res.jsonl.lock").exists() and len(_rows(out)) == 1


# ---------------------------------------------------------------------------------------------- 2: other settings
def test_a_rerun_with_other_settings_refuses_or_moves_the_run_aside(tmp_path, capsys):
    imgs = _images(tmp_path / "in", 2)
    out = tmp_path / "res.jsonl"
    conf = tmp_path / "res.config.json"
    assert explain(imgs[0], "--out", out) == 0
    before = (out.read_bytes(), conf.read_bytes())
    for extra in (["--threshold", "0.7"], ["--aggregate", "max"]):
        assert explain(imgs[1], "--out", out, *extra) == 2
        line = _last_err_line(capsys)
        assert "holds a run with other settings" in line and "--force-new-run" in line and "new --out" in line
        assert (out.read_bytes(), conf.read_bytes()) == before
    # mode: an MLLM run into an expert-only file (refused before any model is looked for)
    assert cli_main(["explain", str(imgs[1]), "--out", str(out), "--model", "org/some-model", "--no-face-crop",
                     "--expert", "bright"]) == 2
    assert "mode: expert-only -> mllm" in _last_err_line(capsys)
    assert explain(imgs[1], "--out", out, "--threshold", "0.7", "--force-new-run") == 0
    [moved] = [p for p in tmp_path.glob("res.run-*.jsonl")]
    assert moved.read_bytes() == before[0]
    assert Path(str(moved).replace(".jsonl", ".config.json")).read_bytes() == before[1]
    assert [r["path"] for r in _rows(out)] == [str(imgs[1])]
    assert json.loads(conf.read_text())["config"]["threshold"] == 0.7


def test_a_resumed_run_whose_model_loads_at_another_precision_is_refused(tmp_path, capsys, selfcontained_llava):
    """--dtype auto is resolved by the machine (bfloat16 on one GPU, float16 on another; float32, bfloat16 or NF4
    on a CPU by free memory): the same options can load another precision, whose records must not join the
    earlier run's. The earlier run's config says what it loaded; here it is edited as another machine wrote it."""
    imgs = _images(tmp_path / "in", 2)
    out, conf = tmp_path / "res.jsonl", tmp_path / "res.config.json"
    run = ["explain", "--out", str(out), "--model", str(selfcontained_llava), "--dtype", "auto", "--no-face-crop",
           "--expert", "bright", "--max-new-tokens", "2", "--quiet"]
    assert cli_main([*run, str(imgs[0])]) == 0
    info = json.loads(conf.read_text())
    assert info["mllm"]["dtype"] == "float32" and info["config"]["dtype"] == "auto"
    info["mllm"]["dtype"] = "bfloat16"
    conf.write_text(json.dumps(info))
    before = out.read_bytes()
    assert cli_main([*run, str(imgs[1])]) == 2
    line = _last_err_line(capsys)
    assert "loaded at another precision (dtype as loaded: bfloat16 -> float32)" in line and "--force-new-run" in line
    assert out.read_bytes() == before
    assert cli_main([*run, str(imgs[1]), "--force-new-run"]) == 0
    [moved] = tmp_path.glob("res.run-*.jsonl")
    assert moved.read_bytes() == before and [r["path"] for r in _rows(out)] == [str(imgs[1])]
    assert json.loads(conf.read_text())["mllm"]["dtype"] == "float32"
    # the same precision resumes as before
    assert cli_main([*run, str(imgs[0])]) == 0 and len(_rows(out)) == 2


def test_mllm_none_config_names_no_model(tmp_path):
    [img] = _images(tmp_path / "in", 1)
    out = tmp_path / "res.jsonl"
    assert explain(img, "--out", out) == 0
    conf = json.loads((tmp_path / "res.config.json").read_text())
    assert conf["mllm"] is None and conf["template_version"] is None
    for k in ("model", "revision", "adapter", "dtype", "load_in_4bit", "load_in_8bit"):
        assert conf["config"][k] is None, k


# ---------------------------------------------------------------------------------------------- 3: OS write errors
def test_dev_full_is_one_line_exit_4(tmp_path, capsys):
    [img] = _images(tmp_path / "in", 1)
    assert explain(img, "--out", "/dev/full") == 4
    line = _last_err_line(capsys)
    assert "cannot write '/dev/full': No space left on device [ENOSPC]" in line and "0 of 1 inputs" in line
    assert not Path("/dev/full.lock").exists() and not Path("/dev/full.config.json").exists()


def test_a_directory_as_out_is_one_line_exit_4(tmp_path, capsys):
    [img] = _images(tmp_path / "in", 1)
    assert explain(img, "--out", tmp_path / "in") == 4
    assert "is a directory [EISDIR]" in _last_err_line(capsys)


def test_read_only_folder_is_one_line_exit_4(tmp_path, capsys, monkeypatch):
    [img] = _images(tmp_path / "in", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root writes anyway: then the OS error is injected)
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:
        real_open = os.open

        def refuse(path, *a, **kw):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *a, **kw)

        monkeypatch.setattr(os, "open", refuse)
    try:
        rc = explain(img, "--out", ro / "res.jsonl")
    finally:
        ro.chmod(0o755)
    assert rc == 4
    line = _last_err_line(capsys)
    assert "res.jsonl" in line and ("[EROFS]" in line or "[EACCES]" in line)


def test_a_failed_write_leaves_valid_jsonl_up_to_the_last_record(tmp_path, capsys, monkeypatch):
    imgs = _images(tmp_path / "in", 3)
    out = tmp_path / "res.jsonl"
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):  # the 2nd record: half of it lands, then the disk is full
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target != str(out):
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] == 2:
            return real_write(fd, bytes(data)[: len(data) // 2])
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    rc = cli_main(["explain", *map(str, imgs), "--out", str(out), *BASE, "--batch-size", "1"])
    monkeypatch.undo()
    assert rc == 4
    line = _last_err_line(capsys)
    assert "[ENOSPC]" in line and "keeps every record completed before" in line and "1 of 3 inputs" in line
    assert out.read_bytes().endswith(b"\n") and [r["path"] for r in _rows(out)] == [str(imgs[0])]


# ---------------------------------------------------------------------------------------------- 4: "\n" only
def test_jsonl_is_split_on_newline_only(tmp_path, capsys):
    from x2dfd.explain import read_records
    from x2dfd.report import load_records

    folder = tmp_path / "in"
    [a] = _images(folder, 1)
    odd = a.rename(folder / "odd\u2028name\x85x\rz.png")
    out = tmp_path / "res.jsonl"
    assert explain(odd, "--out", out) == 0
    raw = out.read_bytes()
    assert raw.count(b"\n") == 1 and "\u2028".encode() in raw  # one line, the separator kept as text
    [rec] = read_records(out)
    assert rec.path == str(odd)
    assert [r.path for r in load_records(out)[0]] == [str(odd)]
    assert explain(odd, "--out", out) == 0  # resumed: nothing explained twice
    assert len(_rows(out)) == 1


def test_undecodable_file_name_bytes_round_trip(tmp_path):
    folder = tmp_path / "in"
    [a] = _images(folder, 1)
    weird = os.fsdecode(bytes(folder) + b"/bad\xffname.png")
    os.rename(a, weird)
    out = tmp_path / "res.jsonl"
    assert explain(weird, "--out", out) == 0
    [row] = _rows(out)
    assert row["path"] == weird and os.fsencode(row["path"]).endswith(b"bad\xffname.png")


# ---------------------------------------------------------------------------------------------- 5: exit codes
def test_exit_codes_and_the_failure_count_line(tmp_path, capsys):
    good = _images(tmp_path / "in", 2)
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    assert explain(*good) == 0
    assert _last_err_line(capsys) == "x2dfd explain: 2 inputs, 2 with a verdict, 0 failed"
    assert explain(*good, bad) == 3
    assert _last_err_line(capsys).startswith("x2dfd explain: 3 inputs, 2 with a verdict, 1 failed (no verdict")
    assert explain(bad) == 3
    with pytest.raises(SystemExit) as exc:  # a usage error: argparse's exit status 2
        cli_main(["explain", str(good[0]), "--batch-size", "0"])
    assert exc.value.code == 2
    assert cli_main(["expert", "score", str(bad), "--expert", "bright", "--no-face-crop", "--quiet"]) == 3
    assert _last_err_line(capsys).startswith("x2dfd expert score: 1 input, 0 with a verdict, 1 failed")


# ---------------------------------------------------------------------------------------------- 6: non-regular
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused_up_front(device, capsys):
    assert explain(device) == 2
    assert "is a character device, not a regular file" in _last_err_line(capsys)


def test_fifos_and_sockets_never_hang(tmp_path, capsys):
    folder = tmp_path / "in"
    [img] = _images(folder, 1)
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.jpg"))
    (folder / "zero.png").symlink_to("/dev/zero")
    try:
        assert explain(fifo) == 2
        assert "is a FIFO (named pipe), not a regular file" in _last_err_line(capsys)
        out = tmp_path / "res.jsonl"
        assert explain(folder, "--out", out) == 0
        err = capsys.readouterr().err
        assert "skipped 3 path(s) that are not regular files" in err
        assert [r["path"] for r in _rows(out)] == [str(img)]
        from x2dfd.media import file_sha256

        with pytest.raises(OSError, match="FIFO"):
            file_sha256(fifo)  # the Python API's pipeline cannot hang on one either
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------- 7: terminal text
def test_hostile_names_reach_the_terminal_escaped(tmp_path, capsys):
    folder = tmp_path / "in"
    good = _images(folder, 1)[0].rename(folder / "ok\x1b[2Jclear\u2028sep.png")
    bad = folder / "bad\nname\x1b]0;title\x07.png"
    bad.write_bytes(b"not an image")
    rc = cli_main(["explain", str(folder), "--mllm", "none", "--expert", "bright", "--no-face-crop"])
    assert rc == 3
    err = capsys.readouterr().err
    for raw in ("\x1b", "\x07", "\u2028", "\x85"):
        assert raw not in err
    assert "ok\\x1b[2Jclear\\u2028sep.png" in err and "bad\\nname\\x1b]0;title\\x07.png" in err
    lines = err.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("file "))
    end = next(i for i, ln in enumerate(lines) if ln.endswith("undetermined") and "records:" in ln)
    assert end - start - 2 == 2  # header, rule, one row per record: no name broke the table
    assert good.exists()


# ---------------------------------------------------------------------------------------------- issue 14, point 6
def test_bad_model_path_fails_before_torch_is_imported(tmp_path):
    [img] = _images(tmp_path, 1)
    code = ("import sys\nfrom x2dfd.cli import main\n"
            "try:\n"
            f"    rc = main(['explain', {str(img)!r}, '--model', './no-such-model'])\n"
            "except SystemExit as exc:\n"
            "    rc = exc.code\n"
            "print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.stdout.split() == ["2", "False"], res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("x2dfd explain: error: --model './no-such-model': no such directory")


def test_help_states_each_default_once_and_explains_mllm(capsys):
    from x2dfd.cliargs import build_parser
    from x2dfd.explain import ExplainConfig

    text = " ".join(build_parser(ExplainConfig, "x2dfd explain").format_help().split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("the shipped blending expert") == 1
    assert "(default: printed to stdout)" in text and "printed to stdout). (default" not in text
    assert "auto (default): load the MLLM named by --model" in text and "none: expert-only" in text
    assert "(default: llava-hf/llava-1.5-7b-hf)" in text and "--force-new-run" in text
    with pytest.raises(SystemExit) as exc:
        cli_main(["expert", "list", "--help"])
    assert exc.value.code == 0 and "usage: x2dfd expert list" in capsys.readouterr().out


def test_report_into_a_new_folder_keeps_the_heatmaps(tmp_path, capsys):
    imgs = _images(tmp_path / "in", 2)
    out = tmp_path / "res.jsonl"
    assert explain(*imgs, "--out", out, "--report", tmp_path / "first") == 0
    assert len(list((tmp_path / "first" / "assets").glob("*.heat.jpg"))) == 2
    assert cli_main(["report", str(out), "--out", str(tmp_path / "second")]) == 0
    assert len(list((tmp_path / "second" / "assets").glob("*.heat.jpg"))) == 2  # recomputed by the expert
    assert _last_err_line(capsys) == ("x2dfd report: 2 records rendered (0 without a verdict); 0 line(s) of "
                                      f"'{out}' are not records")
    # a folder holding someone else's files is refused, and left alone
    other = tmp_path / "mine"
    other.mkdir()
    (other / "index.html").write_text("<p>my homepage</p>")
    assert cli_main(["report", str(out), "--out", str(other)]) == 2
    assert "not an x2dfd report" in _last_err_line(capsys)
    assert [p.name for p in other.iterdir()] == ["index.html"] and "homepage" in (other / "index.html").read_text()


def test_report_folder_may_hold_the_runs_own_files_and_is_checked_first(tmp_path, capsys):
    imgs = _images(tmp_path / "in", 1)
    both = tmp_path / "both"
    for _ in range(2):  # a rerun finds its own JSONL, config and report there
        assert explain(*imgs, "--out", both / "results.jsonl", "--report", both) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert explain(*imgs, "--out", tmp_path / "o.jsonl", "--report", other) == 2
    assert "holds files that are not an x2dfd report ('notes.txt')" in _last_err_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()  # refused before anything was written
