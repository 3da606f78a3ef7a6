"""Stub experts for tests, defined once: the mean brightness of a face crop is its p_fake.

    from tests.stubs import brightness_expert
    Bright = brightness_expert("bright", "brightness", heatmap="ramp")
    with registered(Bright): ...                             # or experts.register_expert("bright", Bright)
    Bright.calls = 0; ...; assert Bright.calls == 0          # faces it scored (a resumed run scores none)

Each call of :func:`brightness_expert` makes a new class with its own name, prompt word, call counter,
``channel`` (None: all channels; 0, 1, 2: the mean of R, G or B alone) and heatmap: ``None`` (no localization:
a None heatmap per face), ``"ramp"`` (0 at the left edge to 1 at the right) or ``"half"`` (0.5 everywhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from x2dfd.records import ExpertScore

HEATMAPS = (None, "ramp", "half")


class BrightnessExpert:
    name, prompt_name, calls, heatmap, channel = "bright", "brightness", 0, None, None

    @classmethod
    def load(cls, weights=None, device="cpu", **kw):
        return cls()

    def score(self, faces):
        type(self).calls += len(faces)
        pixels = [np.asarray(f) if self.channel is None else np.asarray(f)[..., self.channel] for f in faces]
        return [ExpertScore(self.name, float(a.mean() / 255.0)) for a in pixels]

    def localize(self, faces):
        if self.heatmap == "ramp":
            return [np.tile(np.linspace(0, 1, f.width, dtype=np.float32), (f.height, 1)) for f in faces]
        if self.heatmap == "half":
            return [np.full((f.height, f.width), 0.5, np.float32) for f in faces]
        return [None for _ in faces]

    def info(self):
        return {"name": self.name, "weights": None, "sha256": None}


def brightness_expert(name: str = "bright", prompt_name: str = "brightness", heatmap: str | None = None,
                      channel: int | None = None) -> type:
    """A new stub expert class (its own call counter) scoring mean brightness (of one ``channel`` if given)."""
    if heatmap not in HEATMAPS:
        raise ValueError(f"heatmap {heatmap!r}: choose one of {HEATMAPS}")
    return type(f"Brightness_{name}", (BrightnessExpert,),
                {"name": name, "prompt_name": prompt_name, "calls": 0, "heatmap": heatmap, "channel": channel})


@contextlib.contextmanager
def registered(*classes: type) -> Iterator[None]:
    """The stub classes registered under their names for the block (then unregistered)."""
    from x2dfd import experts

    for cls in classes:
        experts.register_expert(cls.name, cls, overwrite=True)
    try:
        yield
    finally:
        for cls in classes:
            experts.unregister_expert(cls.name)
