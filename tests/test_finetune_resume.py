"""`x2dfd finetune --resume` with a new length, and checkpoints whose state cannot be read (issue 11, point 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from x2dfd.errors import UsageError
from x2dfd.finetune.config import FinetuneConfig
from x2dfd.finetune.synthetic import make_seam_dataset
from x2dfd.finetune.train import STATE_FILE, list_checkpoints, read_loss_lines, run_finetune


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run2(selfcontained_llava, tmp_path_factory):
    """A finished 3-step run (stopping inside its first epoch; checkpoints at steps 2 and 3), a pristine copy of
    it, and a config factory for reruns."""
    from test_finetune import _ranking

    root = tmp_path_factory.mktemp("resume")
    make_seam_dataset(root / "data", 8, 8, size=48, seed=3)
    ranking = _ranking(root / "mfa")

    def cfg(max_steps: int, out: Path = root / "run", resume: bool = False) -> FinetuneConfig:
        return FinetuneConfig(data=str(root / "data"), ranking=str(ranking), model=str(selfcontained_llava),
                              out=str(out), face_crop=False, no_expert=True, cue_order="rank", epochs=1,
                              max_steps=max_steps, batch_size=2, eval_fraction=0.25, save_every=2,
                              eval_before=False, quiet=True, resume=resume)

    import shutil

    first = run_finetune(cfg(3))
    assert first.steps == 3
    shutil.copytree(root / "run", root / "pristine")
    return root, cfg


def test_resume_with_more_steps_trains_them(run2):
    root, cfg = run2
    out = root / "run"
    ckpt = list_checkpoints(out / "checkpoints")[-1]
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (3, 0, 3)  # stopped inside epoch 0
    more = run_finetune(cfg(5, resume=True))
    assert more.steps == 5
    assert [e["step"] for e in read_loss_lines(out / "loss.jsonl")] == [1, 2, 3, 4, 5]
    # the same length again: nothing to do, said in one line; fewer steps than done: refused
    with pytest.raises(UsageError, match="already finished its 5 steps; raise --max-steps or --epochs"):
        run_finetune(cfg(5, resume=True))
    with pytest.raises(UsageError, match="past the 4 steps"):
        run_finetune(cfg(4, resume=True))


def test_unreadable_checkpoint_state_is_an_error(run2, tmp_path):
    import shutil

    root, cfg = run2
    out = tmp_path / "copy"
    shutil.copytree(root / "pristine", out)
    older, newest = list_checkpoints(out / "checkpoints")[-2:]
    (newest / STATE_FILE).write_text('{"step": 4, "epo')  # a damaged state file
    with pytest.raises(UsageError, match=r"cannot read .*trainer_state.json.*remove the folder"):
        run_finetune(cfg(6, out=out, resume=True))
    (newest / STATE_FILE).write_text('{"step": 4}')  # readable, incomplete
    with pytest.raises(UsageError, match="not a complete trainer state"):
        run_finetune(cfg(6, out=out, resume=True))
    # a newest folder without any state (its save cut off by a kill) is passed over, said on stderr: the one
    # before it (step 2) is where the run resumes
    (newest / STATE_FILE).unlink()
    with pytest.raises(UsageError, match=f"checkpoint '{older}' is at step 2, past the 1 steps"):
        run_finetune(cfg(1, out=out, resume=True))
    (older / STATE_FILE).unlink()
    with pytest.raises(UsageError, match="no checkpoint"):
        run_finetune(cfg(6, out=out, resume=True))


def test_loss_lines_split_on_newline_only(tmp_path):
    path = tmp_path / "loss.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 0.5, "note": "a\xe2\x80\xa8b\xc2\x85c"}\n{"step": 2, "lo\n'
                     b'{"step": 3, "loss": 0.25}\n')
    assert [e["step"] for e in read_loss_lines(path)] == [1, 3]
    assert read_loss_lines(path, 1)[0]["note"] == "a\u2028b\x85c"
