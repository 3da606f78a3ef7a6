"""`x2dfd evaluate --records RUN.jsonl`: an explain run scored without loading any model, with the same metrics as a
run from scratch; the data (file sha256) and the settings checked, each failure one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.cli import main as cli_main
from tests.stubs import brightness_expert, registered


_Lum = brightness_expert("lum", "luminance")
_Red = brightness_expert("red", "luminance")


@pytest.fixture
def lum_expert():
    with registered(_Lum, _Red):
        yield


def _data(root: Path, n: int = 3) -> Path:
    """real/ darker and fake/ brighter noise images (32 px: the self-contained LLaVA's size), and one fake file
    that is not an image (its record is an error)."""
    rng = np.random.default_rng(0)
    for label, base in (("real", 80), ("fake", 150)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(base + 12 * i, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")
    (root / "fake" / "broken.png").write_bytes(b"not an image at all")
    return root


COMMON = ["--no-face-crop", "--expert", "lum", "--max-new-tokens", "3", "--quiet"]


@pytest.fixture
def explained(tmp_path, selfcontained_llava, lum_expert, monkeypatch):
    """DATA, an explain run of it (relative input paths from DATA's parent, as a user types them) and the model."""
    data = _data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["explain", "data", "--model", str(selfcontained_llava), "--out", "run/results.jsonl", *COMMON]) == 3
    monkeypatch.chdir(tmp_path / "run")  # evaluate elsewhere: the records' relative paths no longer resolve
    return data, tmp_path / "run" / "results.jsonl", selfcontained_llava


def _no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("--records must not load the MLLM")

    monkeypatch.setattr("x2dfd.mllm.load_mllm", boom)
    _Lum.calls = 0


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_records_give_the_metrics_of_a_run_from_scratch_without_loading_a_model(explained, tmp_path, monkeypatch,
                                                                                  capsys):
    data, run, model = explained
    base = ["evaluate", str(data), "--bootstrap", "30", *COMMON]
    assert cli_main(base + ["--model", str(model), "--no-cue-check", "--out", str(tmp_path / "scratch")]) == 3
    scratch = json.loads((tmp_path / "scratch" / "metrics.json").read_text())
    _no_model(monkeypatch)
    capsys.readouterr()
    assert cli_main(base + ["--records", str(run), "--out", str(tmp_path / "rec")]) == 3  # the broken file failed
    assert "7 items, 6 with a verdict, 1 failed" in capsys.readouterr().err
    met = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert _Lum.calls == 0
    assert met["systems"] == scratch["systems"] == ["mllm", "expert:lum", "fusion:mean"]
    assert met["conditions"][0]["levels"] == scratch["conditions"][0]["levels"]
    assert met["conditions"][0]["explanations"] == scratch["conditions"][0]["explanations"]
    assert met["data"]["fingerprint"] == scratch["data"]["fingerprint"] and met["data"]["kinds"] == scratch["data"]["kinds"]
    block = met["conditions"][0]["levels"]["frame"]["systems"]["mllm"]["all"]
    assert (block["n_real"], block["n_fake"], block["n_excluded_fake"]) == (3, 3, 1)  # the error record: excluded
    src = met["records_from"]
    assert src["files"] == [str(run)] and src["matched_by_content"] == 7 and src["matched_by_path"] == 0
    assert src["run"]["model"] == str(model) and "experts" in src["checked"]
    assert any(x.startswith("model (the run's") for x in src["not_checked"])
    assert met["models"]["mllm"]["model"] == str(model) and met["models"]["experts"][0]["name"] == "lum"
    assert any("no cue grounding: --records" in n for n in met["notes"])
    [copy] = (tmp_path / "rec" / "records").glob("clean.from-records.*.jsonl")
    rows = [json.loads(x) for x in copy.read_text().splitlines()]
    assert len(rows) == 7 and all(Path(r["path"]).is_absolute() for r in rows)
    assert sum(r["error"] is not None for r in rows) == 1
    assert met["worst_errors"]["mllm"]["items"][0]["href"].startswith("reports/run/index.html#row=")
    # the latest record of an input wins (a resumed or sharded run): a later line for one file changes its score
    first = json.loads(run.read_text().splitlines()[0])
    target = first["path"]
    moved = dict(first, p_fake=0.999 if first["p_fake"] < 0.5 else 0.001)
    shard = run.with_name("results.shard-0-of-2.jsonl")
    shard.write_text(json.dumps(moved) + "\n")
    assert cli_main(base + ["--records", str(run), "--out", str(tmp_path / "rec2")]) == 3
    copy2 = next((tmp_path / "rec2" / "records").glob("clean.from-records.*.jsonl"))
    [row] = [r for r in map(json.loads, copy2.read_text().splitlines()) if r["path"].endswith("/" + target)]
    assert row["p_fake"] == moved["p_fake"]
    assert json.loads((tmp_path / "rec2" / "metrics.json").read_text())["records_from"]["files"] == [str(run), str(shard)]


def test_records_of_changed_or_missing_files_are_one_line_errors(explained, monkeypatch, capsys):
    data, run, _ = explained
    _no_model(monkeypatch)
    arr = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(arr).save(data / "real" / "1.png")  # changed since explain
    Image.fromarray(arr).save(data / "fake" / "new.png")  # never explained (different bytes: its own sha256)
    arr[0, 0] = 1
    Image.fromarray(arr).save(data / "fake" / "new.png")
    capsys.readouterr()
    assert cli_main(["evaluate", str(data), "--records", str(run), *COMMON]) == 2
    err = _one_line_error(capsys)
    assert "2 of 8 DATA items have no record of their file's content" in err
    assert "'1.png'" in err and "'new.png'" in err and "same --out" in err


def test_records_made_with_other_settings_are_one_line_errors_naming_the_fields(explained, monkeypatch, capsys):
    data, run, model = explained
    _no_model(monkeypatch)
    cases = [(["--threshold", "0.6"], "threshold: run 0.5, evaluate 0.6"),
             (["--face-scale", "1.5"], "face_scale: run 1.3, evaluate 1.5"),
             (["--frames", "8"], "frames: run 16, evaluate 8"),
             (["--max-new-tokens", "5"], "max_new_tokens: run 3, evaluate 5"),
             (["--expert", "red"], "experts: run [lum], evaluate [red]"),
             (["--model", str(model.parent / "other")], "model: run "),
             (["--adapter", str(run.parent)], "adapter: run null")]
    for extra, expected in cases:
        args = ["evaluate", str(data), "--records", str(run), *COMMON]
        if extra[0] in args:  # replace a flag COMMON already gives
            i = args.index(extra[0])
            args[i + 1] = extra[1]
        else:
            args += extra
        if extra[0] == "--model":
            (model.parent / "other").mkdir(exist_ok=True)
        capsys.readouterr()
        assert cli_main(args) == 2, extra
        err = _one_line_error(capsys)
        assert expected in err and "other settings" in err, (extra, err)
    assert cli_main(["evaluate", str(data), "--records", str(run), *COMMON, "--face-crop"]) == 2
    assert "face_crop: run False, evaluate True" in _one_line_error(capsys)
    # naming the run's own model (another spelling of its path) is fine
    assert cli_main(["evaluate", str(data), "--records", str(run), *COMMON, "--model", str(model) + "/",
                     "--bootstrap", "0", "--out", str(run.parent / "ev")]) == 3
    # an expert-only evaluate of an MLLM run scores its experts alone
    capsys.readouterr()
    assert cli_main(["evaluate", str(data), "--records", str(run), *COMMON, "--mllm", "none",
                     "--bootstrap", "0", "--out", str(run.parent / "ev2")]) == 3
    assert json.loads((run.parent / "ev2" / "metrics.json").read_text())["systems"] == ["expert:lum"]


def test_records_refuse_what_needs_the_model(tmp_path, capsys):
    data = _data(tmp_path / "data", 1)
    for extra, flag in ((["--perturb", "jpeg:50"], "--perturb"), (["--cue-check"], "--cue-check"),
                        (["--system", "a=preset:fakevlm"], "--system")):
        with pytest.raises(SystemExit):
            cli_main(["evaluate", str(data), "--records", "x.jsonl", *extra])
        err = _one_line_error(capsys)
        assert f"{flag} needs the model" in err and "without --records" in err
    assert cli_main(["evaluate", str(data), "--records", str(tmp_path / "none.jsonl"), "--mllm", "none",
                     "--no-face-crop"]) == 2
    assert "no such file" in _one_line_error(capsys)


def test_expert_only_run_without_config(tmp_path, lum_expert, monkeypatch, capsys):
    """explain --mllm none written to stdout (no config beside it): scored with --mllm none, the unchecked settings
    said; scoring it as an MLLM run is a one-line error."""
    data = _data(tmp_path / "data", 2)
    run = tmp_path / "run.jsonl"
    assert cli_main(["explain", str(data), "--mllm", "none", "--no-face-crop", "--expert", "lum", "--quiet",
                     "--out", str(run)]) == 3
    run.with_suffix(".config.json").unlink()
    _no_model(monkeypatch)
    capsys.readouterr()
    assert cli_main(["evaluate", str(data), "--records", str(run), "--no-face-crop", "--quiet",
                     "--out", str(tmp_path / "ev")]) == 2
    assert "mode: run expert-only" in _one_line_error(capsys)
    assert cli_main(["evaluate", str(data), "--records", str(run), "--mllm", "none", "--no-face-crop", "--quiet",
                     "--bootstrap", "0", "--out", str(tmp_path / "ev")]) == 3
    assert "cannot be checked" in capsys.readouterr().err
    met = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert met["systems"] == ["expert:lum"] and met["records_from"]["matched_by_path"] == 5 and _Lum.calls == 0
    assert any("no run config" in x for x in met["records_from"]["not_checked"])


def test_a_run_made_against_its_adapters_experts_needs_the_override(explained, monkeypatch, capsys):
    """explain --allow-expert-mismatch (other experts than the adapter was trained with) is recorded in the run's
    config; scoring that run needs --allow-expert-mismatch too."""
    data, run, _ = explained
    _no_model(monkeypatch)
    conf = run.with_name("results.config.json")
    info = json.loads(conf.read_text())
    info["adapter_experts"] = {"adapter": "runs/lora", "status": "mismatch allowed by --allow-expert-mismatch"}
    conf.write_text(json.dumps(info))
    args = ["evaluate", str(data), "--records", str(run), *COMMON, "--bootstrap", "0", "--out", str(run.parent / "e")]
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "adapter 'runs/lora'" in _one_line_error(capsys)
    assert cli_main(args + ["--allow-expert-mismatch"]) == 3
    met = json.loads((run.parent / "e" / "metrics.json").read_text())
    assert met["models"]["adapter_experts"]["status"].startswith("mismatch allowed")
