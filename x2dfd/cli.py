"""The ``x2dfd`` command: one table of subcommands, each a module with ``main(argv) -> int``.

    x2dfd explain IMG_OR_DIR... [--model ID|DIR] [--out results.jsonl]
    x2dfd <command> --help

Modules are imported only when their command runs, so ``x2dfd --help`` does not import torch.
Any :class:`~x2dfd.errors.X2DFDError` that escapes a command is a usage error: one line, exit 2.
"""

from __future__ import annotations

import importlib
import sys

from x2dfd import __version__
from x2dfd.errors import X2DFDError
from x2dfd.records import one_line

# command -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("x2dfd.explain:main", "verdict, p_fake and explanation for images, folders and videos (JSONL)"),
    "assess": ("x2dfd.feature_assessment.assess:main", "rank forgery cues by how well the MLLM's yes/no answers separate real from fake"),
    "finetune": ("x2dfd.finetune.train:main", "LoRA/QLoRA fine-tuning on top-ranked cues and expert scores (SFS + WFS)"),
    "evaluate": ("x2dfd.evaluate:main", "AUC/AP/EER at frame and video level, side by side, under perturbations"),
    "report": ("x2dfd.report:main", "re-render the HTML report (and CSV) of an explain JSONL file"),
    "demo": ("x2dfd.demo.app:main", "Gradio explain-this-image demo on the same pipeline"),
    "expert": ("x2dfd.experts.cli:main", "train or run the external expert detectors (x2dfd expert train|score ...)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: x2dfd <command> [options]   (x2dfd {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'x2dfd <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"x2dfd: unknown command '{name}'. Available: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except X2DFDError as err:
        print(f"x2dfd {name}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"x2dfd {name}: interrupted; records written so far are kept.", file=sys.stderr)
        return 130
