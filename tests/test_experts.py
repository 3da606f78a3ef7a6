"""Expert registry, entry-point plugins, the protocol, the generic ``hf`` expert and the expert CLI."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import numpy as np
import pytest
from PIL import Image

from x2dfd import experts
from x2dfd.experts import base
from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.records import ExpertScore

TOY_PLUGIN = '''
from x2dfd.records import ExpertScore

class ToyExpert:
    """Scores every face by its mean brightness (a stand-in third-party expert)."""
    name = "toy"
    prompt_name = "brightness"

    def __init__(self, weights=None, device="cpu"):
        self.weights, self.device = weights, device

    @classmethod
    def load(cls, weights=None, device="cpu", **kw):
        return cls(weights, device)

    def score(self, faces):
        import numpy as np
        return [ExpertScore(self.name, float(np.asarray(f).mean() / 255.0)) for f in faces]

    def localize(self, faces):
        return None

    def info(self):
        return {"name": self.name, "weights": self.weights}
'''


def _faces(n=3, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 5 * i, 3), dtype=np.uint8)) for i in range(n)]


def test_builtins_defaults_and_unknown_name_lists_choices():
    assert experts.available_experts()[:2] == ["blend", "hf"]
    assert experts.DEFAULT_EXPERTS == ("blend",)
    with pytest.raises(UsageError) as err:
        experts.load_expert("sbl")
    assert str(err.value) == "Unknown expert 'sbl'. Available: blend, hf, swinv2, grip, synthesis."


def test_registry_import_does_not_load_torch_modules():
    # the registry holds strings: listing experts imports no expert module
    assert isinstance(base._BUILTIN["blend"], str)
    experts.available_experts()


def test_plugin_discovered_from_a_fake_distribution(tmp_path, monkeypatch):
    (tmp_path / "toy_expert_plugin.py").write_text(TOY_PLUGIN)
    dist = tmp_path / "toy_expert_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-expert-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[x2dfd.experts]\ntoy = toy_expert_plugin:ToyExpert\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy" in experts.available_experts()
    expert = experts.load_expert("toy", weights="w.bin")
    assert isinstance(expert, experts.Expert)
    faces = [Image.new("RGB", (8, 8), (255, 255, 255)), Image.new("RGB", (8, 8), (0, 0, 0))]
    assert expert.score(faces) == [ExpertScore("toy", 1.0), ExpertScore("toy", 0.0)]
    assert expert.info()["weights"] == "w.bin"
    monkeypatch.delitem(sys.modules, "toy_expert_plugin", raising=False)


def test_plugin_via_monkeypatched_entry_points_broken_and_shadowed(monkeypatch):
    eps = [
        EntryPoint(name="ghost", value="no_such_module_x2dfd:Expert", group=base.ENTRY_POINT_GROUP),
        EntryPoint(name="blend", value="somewhere:Other", group=base.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(base, "entry_points", lambda group: [e for e in eps if e.group == group])
    with pytest.warns(UserWarning, match="shadowed"):
        names = experts.available_experts()
    assert names == ["blend", "hf", "swinv2", "grip", "synthesis", "ghost"]
    with pytest.warns(UserWarning), pytest.raises(UsageError, match="plugin 'ghost'.*could not be imported"):
        experts.load_expert("ghost")
    with pytest.warns(UserWarning), pytest.raises(UsageError) as err:
        experts.load_expert("nope")
    assert "Available: blend, hf, swinv2, grip, synthesis, ghost." in str(err.value)


def test_register_expert_at_runtime_and_protocol_check(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "entry_points", lambda group: [])
    exec_ns: dict = {}
    exec(compile(TOY_PLUGIN, "toy", "exec"), exec_ns)
    experts.register_expert("toy2", exec_ns["ToyExpert"])
    try:
        assert "toy2" in experts.available_experts()
        assert experts.load_expert("toy2").score([Image.new("RGB", (4, 4))])[0].p_fake == 0.0
        with pytest.raises(UsageError, match="already registered"):
            experts.register_expert("toy2", exec_ns["ToyExpert"])
        experts.register_expert("bad", lambda weights=None, device="cpu": object())
        with pytest.raises(UsageError, match="lacks name/prompt_name/score"):
            experts.load_expert("bad")
    finally:
        experts.unregister_expert("toy2")
        experts.unregister_expert("bad")
    assert "toy2" not in experts.available_experts()


# ------------------------------------------------------------------------------------------ hf expert


def _tiny_vit(tmp_path, id2label):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=len(id2label), id2label=id2label,
                    label2id={v: k for k, v in id2label.items()})
    import torch

    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    return tmp_path


def test_hf_expert_reads_fake_label_from_id2label(tmp_path):
    ckpt = _tiny_vit(tmp_path / "vit", {0: "Real", 1: "Fake"})
    expert = experts.load_expert("hf", weights=str(ckpt))
    assert (expert.name, expert.prompt_name, expert.fake_index) == ("hf", "detector", 1)
    faces = _faces()
    scores = expert.score(faces)
    assert [s.expert for s in scores] == ["hf"] * 3
    assert all(0.0 <= s.p_fake <= 1.0 for s in scores)
    assert len({round(s.p_fake, 6) for s in scores}) > 1  # depends on the image
    assert expert.localize(faces) is None
    info = expert.info()
    assert info["fake_label"] == "Fake" and info["weights"] == str(ckpt) and info["backbone"] == "vit"

    # an explicit --fake-label flips the reading: p_fake(label Real) = 1 - p_fake(label Fake)
    flipped = experts.load_expert("hf", weights=str(ckpt), fake_label="Real")
    assert flipped.fake_index == 0
    for a, b in zip(scores, flipped.score(faces)):
        assert a.p_fake + b.p_fake == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UsageError, match="not one of the model's labels"):
        experts.load_expert("hf", weights=str(ckpt), fake_label="Spoofed")


def test_hf_expert_ambiguous_labels_and_load_errors(tmp_path):
    ckpt = _tiny_vit(tmp_path / "vit", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(UsageError, match="cannot tell which label means fake.*fake_label"):
        experts.load_expert("hf", weights=str(ckpt))
    assert experts.load_expert("hf", weights=str(ckpt), fake_label="LABEL_1").fake_index == 1
    assert experts.load_expert("hf", weights=str(ckpt), fake_label="0").fake_index == 0
    with pytest.raises(UsageError, match="needs a checkpoint"):
        experts.load_expert("hf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="local directory"):
        experts.load_expert("hf", weights=str(empty))


def test_hf_expert_from_config_without_weights():
    expert = experts.build_expert("hf", {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32,
                                         "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                                         "id2label": {0: "real", 1: "deepfake"}})
    assert expert.fake_index == 1
    assert len(expert.score(_faces(2))) == 2


# ------------------------------------------------------------------------------------------ CLI


def test_expert_cli_dispatch(capsys):
    from x2dfd.experts.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "blend  (default)" in out and "hf" in out
    assert main([]) == 2
    with pytest.raises(UsageError, match="Available: train, ensemble, score, list"):
        main(["frobnicate"])
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    assert "--holdout-fraction" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", "x"])  # no --real
    assert exit_.value.code == 2
    assert "--real DIR is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--real", "r", "--out", "x", "--val-fraction", "0.6", "--holdout-fraction", "0.5"])
    assert exit_.value.code == 2


def test_top_level_cli_routes_expert_errors(capsys):
    from x2dfd.cli import main

    assert main(["expert", "frobnicate"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
