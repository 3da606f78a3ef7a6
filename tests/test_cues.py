"""Cue bank schema and quality, cue-file errors, --generate-cues parsing/dedupe/appending, generator CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from x2dfd.feature_assessment.cues import DEFAULT_CUES_PATH, REGIONS, load_cues, parse_cue_file
from x2dfd.feature_assessment.generate import (find_duplicate, generate_cues, parse_proposals, similarity,
                                         write_cue_file)
from x2dfd.feature_assessment.scoring import render_cue_text
from x2dfd.errors import UsageError

GOOD = """\
cues:
  - id: eyes.one
    region: eyes
    question: Is the left pupil square?
    present: the left pupil is square
    absent: the left pupil is round
"""


def test_bank_schema_and_coverage():
    bank = load_cues()
    assert len(bank) >= 100
    ids = [c.id for c in bank.cues]
    assert len(ids) == len(set(ids))
    by_region = {r: [c for c in bank.cues if c.region == r] for r in REGIONS}
    assert all(len(v) >= 5 for v in by_region.values()), {r: len(v) for r, v in by_region.items()}
    for c in bank.cues:
        assert c.region in REGIONS and c.id.startswith(c.region + ".")
        assert c.question.endswith("?") and c.question[0].isupper()
        assert c.present and c.absent and c.present != c.absent
        assert c.present[0].islower() and c.absent[0].islower() and not c.present.endswith(".")  # phrases, not sentences
        assert c.origin is None
    assert bank.fingerprint() == load_cues([DEFAULT_CUES_PATH]).fingerprint()


def test_bank_has_no_paraphrases():
    """No two bank questions are duplicates by the measure --generate-cues dedupes with."""
    cues = load_cues().cues
    worst = max((similarity(a.question, b.question), a.id, b.id) for i, a in enumerate(cues) for b in cues[i + 1:])
    assert worst[0] < 0.6, worst
    normalized = {" ".join(c.question.lower().split()) for c in cues}
    assert len(normalized) == len(cues)


def test_cue_text_golden():
    assert render_cue_text("Is the left pupil square?") == (
        "Look closely at the face in this image and answer the question with Yes or No. Is the left pupil square?")


@pytest.mark.parametrize("body, match", [
    (GOOD.replace("region: eyes", "region: nose2"), r"region 'nose2' is not allowed. Available: eyes, eyebrows"),
    (GOOD.replace("square?", "square"), r"must end with '\?'"),
    (GOOD.replace("    absent: the left pupil is round\n", ""), r"missing or empty field\(s\) absent"),
    (GOOD.replace("id: eyes.one", "id: Eyes One"), r"id must look like '<region>.<slug>'"),
    (GOOD + GOOD.split("cues:\n")[1], r"id 'eyes.one' appears twice"),
    (GOOD.replace("    absent:", "    colour: red\n    absent:"), r"unknown field\(s\) colour"),
    ("cues: [\n", r"line \d+: not valid YAML"),
    ("regions: {}\n", r"expected a YAML mapping with a 'cues:' list"),
])
def test_cue_file_errors(tmp_path, body, match):
    path = tmp_path / "cues.yaml"
    path.write_text(body)
    with pytest.raises(UsageError, match=match) as info:
        parse_cue_file(path)
    assert "\n" not in str(info.value) and "cues.yaml" in str(info.value)


def test_merge_and_only(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(GOOD)
    bank = load_cues([DEFAULT_CUES_PATH, extra])
    assert bank.cues[-1].id == "eyes.one" and len(bank) == len(load_cues()) + 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(GOOD.replace("id: eyes.one", "id: eyes.pupil_shape"))
    with pytest.raises(UsageError, match="defined differently in two cue files"):
        load_cues([DEFAULT_CUES_PATH, changed])
    teeth = load_cues(only=["teeth", "eyes.pupil_shape"])
    assert {c.region for c in teeth.cues} == {"teeth", "eyes"} and len(teeth) == 9
    with pytest.raises(UsageError, match="unknown cue id or region 'eyez'"):
        load_cues(only=["eyez"])
    with pytest.raises(UsageError, match="does not exist"):
        load_cues([tmp_path / "nope.yaml"])


# ------------------------------------------------------------------------------------------------ generation
PROPOSALS = """Sure! Here are new cues:
1. eyes | Is the reflection in the left eye missing? | the left eye has no reflection | the left eye has a reflection
- Mouth/Lips | Are the lips a different texture from each other? | the lips differ in texture. | the lips have the same texture
* skin texture | Is the skin on the cheeks too smooth, like plastic? | the cheeks are too smooth | the cheeks look natural
teeth | Are the teeth blurred compared with the lips? | teeth blurred | teeth sharp
hair | Do the eyelashes grow from the eyebrows? | lashes grow from brows | lashes grow from lids
eyes | Is the reflection in the left eye absent? | x | y
nonsense | Is this a question? | a | b
ears | Not a question | a | b
lighting | Is the chin shadow green? | the chin shadow is green
"""


def test_parse_proposals():
    rows = parse_proposals(PROPOSALS)
    assert [r["region"] for r in rows] == ["eyes", "mouth", "skin_texture", "teeth", "hair", "eyes"]
    assert rows[1]["present"] == "the lips differ in texture"  # trailing period dropped
    assert rows[0]["question"] == "Is the reflection in the left eye missing?"


def test_dedupe_on_fixed_strings():
    bank = [c.question for c in load_cues().cues]
    assert find_duplicate("Is the skin on the cheeks too smooth, like plastic?", bank) == (
        "Is the skin on the cheeks unnaturally smooth, like plastic or wax?")
    assert find_duplicate("ARE THE TEETH BLURRY WHILE THE LIPS AROUND THEM ARE SHARP", bank) is not None  # normalized
    assert find_duplicate("Are the teeth blurred compared with the lips?", bank) is not None  # overlap >= 0.6
    assert find_duplicate("Is the reflection in the left eye missing?", bank) is None
    assert find_duplicate("Do the two ears differ in shape or size?", bank) == (
        "Do the two ears look clearly different in shape or size?")
    assert find_duplicate("Are the two nostrils of equal size?", ["Do the two ears differ in shape or size?"]) is None


def test_generate_cues_dedupes_and_numbers(tmp_path):
    bank = load_cues()
    prompts_seen = []

    def propose(prompt: str) -> str:
        prompts_seen.append(prompt)
        return PROPOSALS

    result = generate_cues(propose, bank.cues, n=10, max_rounds=2, origin="generated:fake-lm")
    assert [c.id for c in result.accepted] == ["eyes.gen_001", "mouth.gen_001", "hair.gen_001"]
    assert all(c.origin == "generated:fake-lm" for c in result.accepted)
    reasons = dict(result.rejected)
    assert reasons["Is the skin on the cheeks too smooth, like plastic?"].startswith("duplicates: Is the skin on the cheeks")
    assert reasons["Is the reflection in the left eye absent?"] == "duplicates: Is the reflection in the left eye missing?"
    assert result.rounds == 2 and len(prompts_seen) == 2
    assert "Propose 10 NEW yes/no questions" in prompts_seen[0] and "Propose 7 NEW" in prompts_seen[1]
    assert "eyes | Do the small light reflections" in prompts_seen[0]  # bank examples in the line format

    out = tmp_path / "mine.yaml"
    write_cue_file(out, bank.cues, result.accepted)
    first = out.read_text()
    merged = load_cues([out])
    assert [c.id for c in merged.cues[: len(bank)]] == [c.id for c in bank.cues]  # a complete bank on its own
    assert len(merged) == len(bank) + 3
    # A second run continues the numbering, never rewrites existing entries, and dedupes against the file.
    again = generate_cues(lambda p: PROPOSALS + "eyes | Is there a third eye? | a third eye | two eyes\n",
                          merged.cues, n=5, max_rounds=1)
    assert [c.id for c in again.accepted] == ["eyes.gen_002"]
    write_cue_file(out, bank.cues, again.accepted)
    assert out.read_text().startswith(first)
    assert load_cues([out]).cues[-1].id == "eyes.gen_002"
    assert load_cues([DEFAULT_CUES_PATH, out]).cues[-1].id == "eyes.gen_002"  # bank + file merge cleanly


def test_write_cue_file_refuses_non_appendable(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text(GOOD + "version: 2\n")
    with pytest.raises(UsageError, match="'cues:' must be the last top-level key"):
        write_cue_file(path, [], [])


@pytest.fixture
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_causal_lm(tmp_path: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.conftest import shared_path

    tok = AutoTokenizer.from_pretrained(shared_path("checkpoints", "llava-1.5-7b-hf"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096)
    out = tmp_path / "tiny-lm"
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_generate_cues_cli_with_tiny_causal_lm(tmp_path, capsys, _one_thread):
    from x2dfd.cli import main

    lm = _tiny_causal_lm(tmp_path)
    out = tmp_path / "gen.yaml"
    rc = main(["assess", "--generate-cues", "2", "--cues-out", str(out), "--generator-model", str(lm),
               "--generation-tokens", "12", "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"appended to {out}" in err
    bank = load_cues([out])  # random weights write gibberish: the file is the bank, plus whatever parsed
    assert len(bank) >= len(load_cues()) and all(c.origin for c in bank.cues[len(load_cues()):])


def test_generate_cues_flags():
    from x2dfd.feature_assessment.assess import parse_args

    with pytest.raises(SystemExit) as info:
        parse_args(["--generate-cues", "2"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        parse_args([])  # neither DATA nor --generate-cues
    cfg = parse_args(["--generate-cues", "2", "--cues-out", "x.yaml"])
    assert cfg.data is None and cfg.generate_cues == 2


def test_mllm_own_language_model_proposes(selfcontained_llava, _one_thread):
    """Without --generator-model the MLLM's own LM is prompted text-only through its chat template."""
    from x2dfd.feature_assessment.generate import mllm_generator
    from x2dfd.mllm import MLLMOptions, load_mllm

    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava)))
    prompts = []
    propose = mllm_generator(mllm, max_new_tokens=6, seed=3)

    def spy(prompt: str) -> str:
        prompts.append(prompt)
        text = propose(prompt)
        assert isinstance(text, str)
        return text + "\nears | Is an earlobe split in two? | an earlobe is split in two | the earlobes are whole"

    result = generate_cues(spy, load_cues().cues, n=1, max_rounds=2)
    assert [c.id for c in result.accepted] == ["ears.gen_001"] and result.rounds == 1 and len(prompts) == 1
