"""The ``x2dfd`` command: one table of subcommands, each a module with ``main(argv) -> int``.

    x2dfd explain IMG_OR_DIR... [--model ID|DIR] [--out results.jsonl]
    x2dfd <command> --help

Modules are imported only when their command runs, so ``x2dfd --help`` does not import torch.
Any :class:`~x2dfd.errors.X2DFDError` that escapes a command is one line on stderr and its class's exit
status (2 usage, 4 output not writable, 5 output busy; see ``x2dfd.errors``); an OS-level write failure
that escapes as a plain OSError (disk full, read-only, permission) is one line and exit 4 too.
"""

from __future__ import annotations

import importlib
import sys

from x2dfd import __version__
import errno

from x2dfd.errors import EXIT_INTERRUPTED, EXIT_OUTPUT, X2DFDError
from x2dfd.records import os_reason, terminal_line

# OS errors that mean "the output cannot be written", whatever wrote it.
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EDQUOT, errno.EFBIG,
                errno.EIO, errno.ENOTDIR, errno.EPIPE}

# command -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("x2dfd.explain:main", "verdict, p_fake and explanation for images, folders and videos (JSONL)"),
    "assess": ("x2dfd.feature_assessment.assess:main", "rank forgery cues by how well the MLLM's yes/no answers separate real from fake"),
    "finetune": ("x2dfd.finetune.train:main", "LoRA/QLoRA fine-tuning on top-ranked cues and expert scores (SFS + WFS)"),
    "evaluate": ("x2dfd.evaluate:main", "AUC/AP/EER at frame and video level, side by side, under perturbations"),
    "report": ("x2dfd.report:main", "re-render the HTML report (and CSV) of an explain JSONL file"),
    "demo": ("x2dfd.demo.app:main", "Gradio explain-this-image demo on the same pipeline"),
    "expert": ("x2dfd.experts.cli:main", "train or run the external expert detectors (x2dfd expert train|score ...)"),
    "convert": ("x2dfd.convert:main", "turn a published release (x2dfd-release) into an adapter, experts and preset.json"),
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
        print(f"x2dfd: unknown command '{terminal_line(name, 100)}'. Available: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except X2DFDError as err:
        print(f"x2dfd {name}: error: {terminal_line(err, 1000)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"x2dfd {name}: interrupted; records written so far are kept.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        where = f" '{err.filename}'" if err.filename else ""
        print(f"x2dfd {name}: error: cannot write{terminal_line(where)}: {os_reason(err)}", file=sys.stderr)
        return EXIT_OUTPUT
