"""``x2dfd explain``: verdict, p_fake and a natural-language explanation for each face image or video.

    x2dfd explain photos/ clip.mp4 --out results.jsonl                # default MLLM: llava-hf/llava-1.5-7b-hf
    x2dfd explain face.jpg --model ./my-llava --adapter ./x2dfd-lora  # a local checkpoint + LoRA adapter
    x2dfd explain photos/ --mllm none                                 # expert-only triage, no MLLM weights needed

One JSON line per input (see ``x2dfd.records.Record``), appended and flushed as each finishes;
a summary table on stderr. Exit status 0 when every input got a record (even records carrying
errors); 2 for usage errors (bad flags, a model that cannot be found).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from x2dfd import __version__
from x2dfd.cliargs import parse_config, to_jsonable
from x2dfd.errors import UsageError
from x2dfd.inputs import expand_inputs
from x2dfd.modelargs import ModelArgs
from x2dfd.pipeline import PipelineOptions
from x2dfd.records import Record


@dataclass
class ExplainConfig(PipelineOptions, ModelArgs):
    """Explain face images and videos: verdict, p_fake and explanation per input, as JSON lines."""

    inputs: list[str] = field(default_factory=list, metadata={"positional": True})
    """Images, videos, directories (searched recursively) or glob patterns."""
    out: str | None = None
    """JSONL file the records are appended to (default: printed to stdout)."""
    mllm: str = field(default="auto", metadata={"choices": ["auto", "none"]})
    """none: expert-only verdicts (no MLLM is loaded, no explanation text is invented)."""
    expert: list[str] = field(default_factory=list, metadata={"metavar": "NAME[=WEIGHTS]"})
    """External expert to run, by registry name; NAME=WEIGHTS loads other weights, e.g. from `x2dfd expert train` (default: the shipped blending expert)."""
    no_expert: bool = field(default=False, metadata={"store_true": True})
    """Run no external expert (the prompt then carries no expert scores)."""
    report: str | None = None
    """Also write a self-contained HTML report (thumbnails, face crops, heatmaps, explanations) into this directory."""
    quiet: bool = field(default=False, metadata={"store_true": True})
    """No progress bar and no summary table."""

    def __post_init__(self):
        ModelArgs.__post_init__(self)
        PipelineOptions.__post_init__(self)
        if not self.inputs:
            raise UsageError("give at least one INPUT (image, video, directory or glob)")
        if self.no_expert and self.expert:
            raise UsageError("--no-expert and --expert exclude each other")


def build_explainer(cfg: ExplainConfig):
    """Load what ``cfg`` asks for (MLLM, experts) and return the pipeline (:func:`x2dfd.api.build_explainer`)."""
    from x2dfd.api import build_explainer as build

    experts = [] if cfg.no_expert else (cfg.expert or None)
    return build(None if cfg.mllm == "none" else cfg, experts, cfg, device=cfg.device)


def record_key(record: Record) -> tuple:
    """What makes a record "done" for resuming: the same file content at the same path, by the same model."""
    return (record.path, record.sha256, record.model, record.adapter)


def read_records(path: Path) -> list[Record]:
    """Records of a JSONL file; a torn last line (a run killed mid-write) is dropped from the file."""
    if not path.is_file():
        return []
    records, good_bytes = [], 0
    with path.open("rb") as fh:
        for raw in fh:
            try:
                records.append(Record.from_dict(json.loads(raw)))
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
                break
            good_bytes += len(raw)
    if good_bytes < path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(good_bytes)
    return records


class RecordWriter:
    """Appends records as JSON lines and flushes each one, so an interrupted run keeps what finished."""

    def __init__(self, out: Path | None):
        self.path = out
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        else:
            self._fh = sys.stdout

    def write(self, record: Record) -> None:
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()
        if self.path is not None:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self.path is not None:
            self._fh.close()


class Shards:
    """Scale-out through accelerate (``accelerate launch -m x2dfd explain ...``): process r of n explains
    inputs r, r+n, ... into ``OUT.shard-r-of-n.jsonl``; the main process merges the shards into OUT once
    every process is done. A single process (plain ``x2dfd explain``) writes OUT directly."""

    def __init__(self, out: Path | None):
        self.out = out
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            # cpu=True: without CUDA, still form a (gloo) process group so the processes can meet to merge.
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1
        if self.world > 1 and out is None:
            raise UsageError("several processes need --out FILE.jsonl to merge their records into")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_path(self, rank: int) -> Path:
        assert self.out is not None
        return self.out.with_name(f"{self.out.stem}.shard-{rank}-of-{self.world}{self.out.suffix}")

    def my_out(self) -> Path | None:
        return self.shard_path(self.rank) if self.world > 1 else self.out

    def done(self) -> list[Record]:
        """Records finished by earlier runs: the merged file and any shard files left by a killed run."""
        if self.out is None:
            return []
        records = read_records(self.out)
        for shard in sorted(self.out.parent.glob(f"{self.out.stem}.shard-*{self.out.suffix}")):
            records += read_records(shard)
        return records

    def take(self, paths: list[str]) -> list[str]:
        return paths[self.rank :: self.world]

    def device(self, requested: str) -> str:
        if self.state is None or requested != "auto":
            return requested
        return "cpu" if self.state.device.type == "cpu" else str(self.state.device)

    def merge(self, order: list[str]) -> list[Record]:
        """Wait for every process; the main one folds all shards into OUT (one record per key, input order)."""
        if self.state is not None:
            self.state.wait_for_everyone()
        if self.out is None or not self.is_main:
            return []
        shards = sorted(self.out.parent.glob(f"{self.out.stem}.shard-*{self.out.suffix}"))
        records = read_records(self.out) + [r for sh in shards for r in read_records(sh)]
        rank_of = {p: i for i, p in enumerate(order)}
        unique: dict[tuple, Record] = {}
        for r in records:
            unique.setdefault(record_key(r) + (r.face_index,), r)
        merged = sorted(unique.values(), key=lambda r: (rank_of.get(r.path, len(rank_of)), r.face_index or 0))
        if shards:
            tmp = self.out.with_suffix(self.out.suffix + ".tmp")
            tmp.write_text("".join(r.to_json() + "\n" for r in merged), encoding="utf-8")
            tmp.replace(self.out)
            for sh in shards:
                sh.unlink()
        return merged


def summary_table(records: list[Record], limit: int = 40) -> str:
    """A readable summary: one row per record (first ``limit``), label counts, and every error."""
    counts = Counter(r.label for r in records)
    rows = [("file", "label", "p_fake", "experts", "note")]
    for r in records[:limit]:
        name = Path(r.path).name + (f"#face{r.face_index}" if r.face_index is not None else "")
        experts = " ".join(f"{k}={'N/A' if v is None else f'{v:.3f}'}" for k, v in r.experts.items())
        note = "error" if r.error else (f"{len(r.frames or [])} frames" if r.kind == "video" else "")
        rows.append((name[:48], r.label, "-" if r.p_fake is None else f"{r.p_fake:.3f}", experts[:40], note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(records) > limit:
        lines.append(f"... {len(records) - limit} more")
    lines.append(
        f"{len(records)} records: {counts.get('fake', 0)} fake, {counts.get('real', 0)} real, "
        f"{counts.get('undetermined', 0)} undetermined"
    )
    errors = [r for r in records if r.error]
    if errors:
        lines.append(f"{len(errors)} with errors:")
        lines += [f"  {r.path}: {r.error}" for r in errors]
    return "\n".join(lines)


def run_explain(cfg: ExplainConfig) -> list[Record]:
    """Everything ``x2dfd explain`` does, callable from Python; returns this run's records (all of them,
    earlier runs' included, when --out is given)."""
    from tqdm.auto import tqdm

    from x2dfd.media import file_sha256

    paths = expand_inputs(cfg.inputs)
    if cfg.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    out = Path(cfg.out) if cfg.out else None
    shards = Shards(out)
    cfg.device = shards.device(cfg.device)
    explainer = build_explainer(cfg)
    model = explainer.model_name
    done = {(r.path, r.sha256) for r in shards.done() if (r.model, r.adapter) == (model, explainer.adapter)}
    todo = [p for p in shards.take(paths) if (p, _sha256_or_none(file_sha256, p)) not in done]
    if out is not None and shards.is_main:
        resolved = {"command": "explain", "x2dfd_version": __version__, "config": to_jsonable(cfg),
                    "processes": shards.world, "template_version": explainer.template_version,
                    "mllm": explainer.mllm.describe() if explainer.mllm else None,
                    "experts": [e.info() for e in explainer.experts]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    if not cfg.quiet and len(todo) < len(shards.take(paths)):
        print(f"resuming: {len(shards.take(paths)) - len(todo)} inputs already in {out}, {len(todo)} to go",
              file=sys.stderr)
    writer = RecordWriter(shards.my_out())
    assets = None
    if cfg.report:
        from x2dfd.report import ReportAssets

        assets = ReportAssets(Path(cfg.report))
    records: list[Record] = []
    bar = tqdm(total=len(todo), unit="file", desc=f"explain[{shards.rank}]" if shards.world > 1 else "explain",
               disable=cfg.quiet or len(todo) < 2, file=sys.stderr, position=shards.rank)
    seen: set[str] = set()
    try:
        for record, artifacts in explainer.run_with_artifacts(todo, heatmaps=assets is not None):
            writer.write(record)
            records.append(record)
            if assets is not None:
                assets.save(record, artifacts)
            if record.path not in seen:
                seen.add(record.path)
                bar.update(1)
    finally:
        bar.close()
        writer.close()
    merged = shards.merge(paths) if out is not None else records
    if cfg.report and shards.is_main:
        from x2dfd.report import render_report

        # From the JSONL when there is one: its label_true fields reach the report's metrics.
        index = render_report(out if out is not None else records, Path(cfg.report))
        if not cfg.quiet:
            print(f"report: {index}", file=sys.stderr)
    return merged if shards.is_main else records


def _sha256_or_none(file_sha256, path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExplainConfig, argv, prog="x2dfd explain")
    records = run_explain(cfg)
    if not cfg.quiet and records and int(os.environ.get("RANK", "0")) == 0:
        print(summary_table(records), file=sys.stderr)
    return 0
