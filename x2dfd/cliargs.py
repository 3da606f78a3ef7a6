"""Dataclass -> argparse: every command's options are one dataclass whose field docstrings are its ``--help``.

A field ``batch_size: int = 4`` followed by a string literal becomes ``--batch-size N`` with that
string as help. ``field(metadata={"positional": True})`` makes a positional argument (``"optional": True``: it may be
left out);
``list[...]`` options are repeatable (``--expert a --expert b``); ``bool`` fields become
``--flag`` / ``--no-flag``; ``metadata={"choices": [...]}`` restricts values; ``metadata={"flag": "--x"}``
renames the flag; ``metadata={"store_true": True}`` makes a bool a plain switch (no ``--no-`` twin). This module must not import torch: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from x2dfd.errors import UsageError

T = TypeVar("T")


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring literal written right below it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool, bool]:
    """(element type, is_list, is_optional) for annotations like ``list[str] | None``."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True, optional
    return tp, False, optional


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once: not where its help already names it ("default: ..."), and not
    for defaults that say nothing (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        default = action.default
        if default is argparse.SUPPRESS or default is None or default is False or default == [] or default == ():
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (inspect.getdoc(cls) or "").split("\n\n")[0],
        epilog=getattr(cls, "cli_epilog", None),
        formatter_class=HelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        elem, is_list, _ = _base_type(hints[f.name])
        help_text = docs.get(f.name, "")
        conv = {int: int, float: float, str: str, Path: Path}.get(elem, str)
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        if f.metadata.get("positional"):
            nargs = ("*" if f.metadata.get("optional") else "+") if is_list else ("?" if f.metadata.get("optional") else None)
            parser.add_argument(f.name, nargs=nargs, type=conv, help=help_text,
                                metavar=f.metadata.get("metavar", f.name.upper()),
                                **({"default": default} if f.metadata.get("optional") else {}))
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if elem is bool and not is_list:
            action = "store_true" if f.metadata.get("store_true") else argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=f.name, action=action, default=default, help=help_text)
        elif is_list:
            parser.add_argument(flag, dest=f.name, action="append", type=conv, choices=choices,
                                default=None, metavar=f.metadata.get("metavar"), help=help_text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=f.name, type=conv, choices=choices, default=default,
                                metavar=f.metadata.get("metavar"), help=help_text)
    return parser


def parse_config(cls: type[T], argv: list[str] | None, prog: str) -> T:
    """Parse ``argv`` into ``cls``; validation errors from ``__post_init__`` exit 2 with one line."""
    parser = build_parser(cls, prog)
    ns = vars(parser.parse_args(argv))
    for f in dataclasses.fields(cls):
        if ns.get(f.name) is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            ns[f.name] = f.default_factory()  # type: ignore[misc]
    try:
        return cls(**{k: v for k, v in ns.items()})
    except UsageError as err:
        from x2dfd.records import terminal_line

        parser.exit(2, f"{prog}: error: {terminal_line(err, 1000)}\n")


def to_jsonable(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain JSON (written next to every command's outputs)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, (list, tuple)):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[k] = v
    return out
