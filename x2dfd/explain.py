"""``x2dfd explain``: verdict, p_fake and a natural-language explanation for each face image or video.

    x2dfd explain photos/ --out results.jsonl                         # default MLLM: llava-hf/llava-1.5-7b-hf
    x2dfd explain face.jpg --model ./my-llava --adapter ./x2dfd-lora  # a local checkpoint + LoRA adapter
    x2dfd explain photos/ --mllm none                                 # expert-only triage, no MLLM weights needed

One JSON line per input (see ``x2dfd.records.Record``), appended and flushed as each finishes;
a summary table on stderr, and always (even with ``--quiet``) a last stderr line saying how many
inputs failed. Exit status (``x2dfd.errors``): 0 every input got a verdict; 3 some or all inputs got
none (their records say why); 2 usage errors (bad flags, a model that cannot be found, an ``--out``
that is not x2dfd's or belongs to a run with other settings); 4 the output could not be written;
5 another run is writing the same ``--out``.

``--out FILE`` is only ever appended to, under a lock (``FILE.lock`` beside it, held with flock while
the run lasts): a second run on the same file refuses at once. A file whose first line is not an
x2dfd record is never touched. A corrupt line in the middle of the file is kept and reported by
its line number; only a torn last line (a write cut off by a kill) is removed. ``FILE.config.json``
(``results.config.json`` for ``results.jsonl``) names the run's settings; a rerun with other
settings (model, adapter, mode, experts, verdict options) refuses unless ``--force-new-run``, which
first moves the earlier run's files aside (``results.run-<time>.jsonl`` and its config).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from x2dfd import __version__
from x2dfd.cliargs import parse_config, to_jsonable
from x2dfd.errors import (EXIT_INPUTS_FAILED, EXIT_OK, EXIT_STATUS_HELP, OutputBusyError, OutputError, UsageError, X2DFDError)
from x2dfd.inputs import expand_inputs
from x2dfd.modelargs import ModelArgs
from x2dfd.pipeline import PipelineOptions
from x2dfd.records import Record, os_reason, safe_text, scan_jsonl, terminal_line


@dataclass
class ExplainConfig(PipelineOptions, ModelArgs):
    """Explain face images and videos: verdict, p_fake and explanation per input, as JSON lines."""

    cli_epilog: ClassVar[str] = EXIT_STATUS_HELP

    inputs: list[str] = field(default_factory=list, metadata={"positional": True})
    """Images, videos, directories (searched recursively) or glob patterns."""
    out: str | None = None
    """JSONL file the records are appended to (default: printed to stdout). A rerun resumes it; it is locked while a run writes it."""
    mllm: str = field(default="auto", metadata={"choices": ["auto", "none"]})
    """auto (default): load the MLLM named by --model (and --adapter) for verdict, p_fake and explanation; none: expert-only verdicts from the experts' scores (no MLLM is loaded, nothing downloaded, no explanation text invented)."""
    expert: list[str] = field(default_factory=list, metadata={"metavar": "NAME[=WEIGHTS]"})
    """External expert to run, by registry name; NAME=WEIGHTS loads other weights, e.g. from `x2dfd expert train` (default: the experts an --adapter from `x2dfd finetune` was trained with, recorded in its preset.json; else the shipped blending expert)."""
    no_expert: bool = field(default=False, metadata={"store_true": True})
    """Run no external expert (the prompt then carries no expert scores)."""
    allow_expert_mismatch: bool = field(default=False, metadata={"store_true": True})
    """Run even though --expert/--no-expert/--preset differ from the experts the --adapter was trained with (or their recorded weights file changed); without it that is an error. The run's config records both sets."""
    report: str | None = None
    """Also write a self-contained HTML report (thumbnails, face crops, heatmaps, explanations) into this directory."""
    force_new_run: bool = field(default=False, metadata={"store_true": True})
    """When --out holds a run with other settings (model, adapter, mode, experts, verdict options): move that run's files aside (OUT.run-<time>.jsonl and its config) and start a new one, instead of refusing."""
    quiet: bool = field(default=False, metadata={"store_true": True})
    """No progress bar and no summary table (the last stderr line still says how many inputs failed)."""

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

    experts = [] if cfg.no_expert else (cfg.expert or None)  # None: the preset's experts, else the default set
    return build(None if cfg.mllm == "none" else cfg, experts, cfg, device=cfg.device)


def record_key(record: Record) -> tuple:
    """What makes a record "done" for resuming: the same file content at the same path, by the same model."""
    return (record.path, record.sha256, record.model, record.adapter)


def _warn(message: str) -> None:
    print(terminal_line(message, 1000), file=sys.stderr)


# ------------------------------------------------------------------------------------------ the out file
MLLM_FIELDS = ("model", "revision", "adapter", "dtype", "load_in_4bit", "load_in_8bit", "trust_remote_code")
# Settings that change a verdict: records made under other values must not share one file.
RUN_FIELDS = ("threshold", "face_crop", "all_faces", "align", "face_scale", "min_face_score", "frames", "aggregate",
              "topk", "preset")


def config_path(out: Path) -> Path:
    """``results.config.json`` beside ``results.jsonl``."""
    return out.with_suffix(".config.json") if out.suffix else out.with_name(out.name + ".config.json")


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a run is, from its resolved config (``to_jsonable`` of ExplainConfig): mode, MLLM, experts and the
    settings that change verdicts. Two runs with the same identity may share one --out (resume)."""
    from x2dfd.experts import DEFAULT_EXPERTS

    mllm = config.get("mllm", "auto") != "none"
    if "experts_resolved" in config:  # what the run resolved (an adapter's recorded experts included)
        experts = list(config["experts_resolved"] or [])
    else:  # a config written before x2dfd recorded it
        experts = [] if config.get("no_expert") else list(config.get("expert") or DEFAULT_EXPERTS)
    ident: dict[str, Any] = {"mode": "mllm" if mllm else "expert-only"}
    for k in ("model", "revision", "adapter", "dtype", "load_in_4bit", "load_in_8bit"):
        ident[k] = config.get(k) if mllm else None
    ident["experts"] = experts
    defaults = {f: getattr(PipelineOptions, f, None) for f in RUN_FIELDS}
    for k in RUN_FIELDS:
        ident[k] = config.get(k, defaults.get(k))
    return ident


def _records_identity(records: list[Record]) -> dict[str, Any] | None:
    """For a file without a config (an older x2dfd): what its records say about the run."""
    if not records:
        return None
    last = records[-1]
    ident: dict[str, Any] = {"mode": last.mode, "model": last.model, "adapter": last.adapter}
    names = sorted({k for r in records for k in (r.experts or {})})
    if names:  # records that failed before any expert ran name none: they say nothing about the expert set
        ident["experts"] = names
    return ident


def resolved_config(cfg: ExplainConfig, command: str = "explain") -> dict[str, Any]:
    """``to_jsonable(cfg)`` with the MLLM's options null in expert-only runs (no model was loaded)."""
    from x2dfd.api import resolve_expert_specs

    conf = to_jsonable(cfg)
    if cfg.mllm == "none":
        for k in MLLM_FIELDS:
            conf[k] = None
    # The experts this run uses, as the explainer will resolve them: with no --expert, an adapter's recorded
    # experts (preset.json), else the default set. A rerun naming the same experts explicitly is the same run.
    conf["experts_resolved"] = [] if cfg.no_expert else resolve_expert_specs(
        None if cfg.mllm == "none" else cfg, cfg.expert or None, cfg,
        getattr(cfg, "allow_expert_mismatch", False))[0]
    return conf


def _differences(old: dict[str, Any], new: dict[str, Any], keys) -> list[str]:
    out = []
    for k in keys:
        if k in old and old.get(k) != new.get(k):
            out.append(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}")
    return out


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return "null" if v is None else str(v)


class OutputLock:
    """An exclusive ``flock`` on ``TARGET.lock`` (a sidecar: it outlives the target being renamed), taken
    without waiting: a second run on the same target refuses at once instead of interleaving lines.
    The lock file holds the owner's pid and is removed when released (a crashed run's lock is free,
    since the kernel drops flocks of dead processes)."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl

        for _ in range(20):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as err:
                raise OutputError(f"cannot create the lock file '{safe_text(self.path)}' for "
                                  f"'{safe_text(self.target)}': {os_reason(err)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_small(self.path)
                os.close(fd)
                raise OutputBusyError(f"'{safe_text(self.target)}' is being written by another x2dfd run"
                                      f"{f' (pid {owner})' if owner else ''}; wait for it to finish, or give "
                                      "another --out") from None
            except OSError as err:  # a filesystem without flock: go on, but say so
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise OutputError(f"cannot lock '{safe_text(self.path)}': {os_reason(err)}") from None
                _warn(f"x2dfd: warning: '{self.path}' cannot be locked on this filesystem ({os_reason(err)}); "
                      "do not run two x2dfd commands on this --out at once")
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its previous owner while we opened it: try again
                os.close(fd)
                continue
            self.fd = fd
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
            return self
        raise OutputBusyError(f"could not take the lock '{safe_text(self.path)}'; retry")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_small(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:20]
    except OSError:
        return ""


def read_records(path: Path, repair: bool = True, warn: bool = True) -> list[Record]:
    """Records of one of x2dfd's JSONL files (see :func:`x2dfd.records.scan_jsonl`; a file that is not
    x2dfd's raises UsageError). ``repair`` (only under the file's lock): a torn last line (a run killed
    mid-write) is cut off and a last record missing its newline gets one, so appending starts on a clean
    line. Corrupt lines in the middle stay in the file; ``warn`` names them on stderr."""
    scan = scan_jsonl(path)
    if warn:
        for n, why in scan.bad_lines[:10]:
            _warn(f"x2dfd: '{path}' line {n} is not a record ({why}); it is kept, and the records after it are read")
        if len(scan.bad_lines) > 10:
            _warn(f"x2dfd: '{path}': {len(scan.bad_lines) - 10} more lines that are not records")
    if repair and (scan.torn or scan.missing_newline):
        try:
            with open(path, "r+b") as fh:
                if scan.torn:
                    fh.truncate(scan.good_end)
                    if warn:
                        _warn(f"x2dfd: '{path}': removed a torn last line ({len(scan.torn)} bytes of a write that "
                              "was cut off); its input is explained again")
                else:
                    fh.seek(0, os.SEEK_END)
                    fh.write(b"\n")
        except OSError as err:
            raise OutputError(f"cannot repair the last line of '{safe_text(path)}': {os_reason(err)}") from None
    return scan.records


class RecordWriter:
    """Appends records as JSON lines, each written whole and flushed (fsynced for files), so an interrupted
    run keeps what finished. A write that fails (disk full, read-only, ...) is cut back off the file, which
    stays valid JSONL up to its last complete record, and raises :class:`~x2dfd.errors.OutputError`."""

    def __init__(self, out: Path | None):
        self.path = out
        self.count = 0
        self._fd: int | None = None
        self._regular = False
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                         | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            hint = "; give a file name for --out" if err.errno == errno.EISDIR else ""
            raise OutputError(f"cannot write '{safe_text(self.path)}': {os_reason(err)}{hint}") from None
        import fcntl
        import stat

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        self._fd = fd
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)

    def write(self, record: Record) -> None:
        data = (record.to_json() + "\n").encode("utf-8")
        if self._fd is None:
            try:
                buffer = getattr(sys.stdout, "buffer", None)
                if buffer is not None:
                    sys.stdout.flush()
                    buffer.write(data)
                    buffer.flush()
                else:
                    sys.stdout.write(data.decode("utf-8"))
                    sys.stdout.flush()
            except OSError as err:
                raise OutputError(f"cannot write the records to stdout: {os_reason(err)}") from None
            self.count += 1
            return
        start = os.lseek(self._fd, 0, os.SEEK_END) if self._regular else None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if self._regular:
                os.fsync(self._fd)
        except OSError as err:
            if start is not None:
                try:
                    os.ftruncate(self._fd, start)  # never leave half a line behind
                except OSError:
                    pass
            kept = "; the file keeps every record completed before this one" if self._regular else ""
            raise OutputError(f"cannot write '{safe_text(self.path)}': {os_reason(err)}{kept}") from None
        self.count += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_json_file(path: Path, data: dict[str, Any]) -> None:
    """Write a small JSON file atomically (a reader never sees half of it); OS errors are OutputError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8",
                       errors="backslashreplace")
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"cannot write '{safe_text(path)}': {os_reason(err)}") from None


def _is_regular_or_absent(path: Path) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return True  # reported when it is read or written


def read_run_config(path: Path) -> dict[str, Any] | None:
    """An existing run config, None when there is none; UsageError when the file is not x2dfd's."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"'{safe_text(path)}' exists but is not an x2dfd run config ({type(err).__name__}); x2dfd "
                         "never overwrites a file it did not write: give a new --out") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "command" not in data:
        raise UsageError(f"'{safe_text(path)}' exists but is not an x2dfd run config; x2dfd never overwrites a file it "
                         "did not write: give a new --out")
    return data


class Shards:
    """Scale-out through accelerate (``accelerate launch -m x2dfd explain ...``): process r of n explains
    inputs r, r+n, ... into ``OUT.shard-r-of-n.jsonl``; the main process appends the shards' records to OUT
    (input order, nothing twice) once every process is done. A single process writes OUT directly."""

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

    def shard_files(self) -> list[Path]:
        assert self.out is not None
        return sorted(self.out.parent.glob(f"{self.out.stem}.shard-*{self.out.suffix}"))

    def my_out(self) -> Path | None:
        return self.shard_path(self.rank) if self.world > 1 else self.out

    def agree(self, error: X2DFDError | None) -> None:
        """Every process learns whether any process failed its checks (so none waits forever for another)."""
        if self.state is not None:
            from accelerate.utils import gather_object

            failures = [e for e in gather_object([None if error is None else (type(error).__name__, str(error))])
                        if e is not None]
            if failures and error is None:
                kind, message = failures[0]
                error = {"OutputBusyError": OutputBusyError, "OutputError": OutputError}.get(kind, UsageError)(message)
        if error is not None:
            raise error

    def done(self) -> list[Record]:
        """Records finished by earlier runs: the merged file and any shard files left by a killed run
        (only this process's own file is repaired; it holds that file's lock)."""
        if self.out is None:
            return []
        mine = self.my_out()
        records = read_records(self.out, repair=self.out == mine and self.is_main, warn=self.is_main)
        for shard in self.shard_files():
            records += read_records(shard, repair=shard == mine, warn=shard == mine)
        return records

    def take(self, paths: list[str]) -> list[str]:
        return paths[self.rank :: self.world]

    def device(self, requested: str) -> str:
        if self.state is None or requested != "auto":
            return requested
        return "cpu" if self.state.device.type == "cpu" else str(self.state.device)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def merge(self, order: list[str]) -> None:
        """Main process, after every process is done: append the shards' records that OUT lacks (one per key,
        input order) and remove the shards. OUT is only appended to, never rewritten."""
        if self.out is None or not self.is_main:
            return
        shards = self.shard_files()
        if not shards:
            return
        have = {record_key(r) + (r.face_index,) for r in read_records(self.out, repair=True, warn=False)}
        rank_of = {p: i for i, p in enumerate(order)}
        new: dict[tuple, Record] = {}
        keep: list[Path] = []
        for sh in shards:
            scan = scan_jsonl(sh)
            if scan.bad_lines:
                keep.append(sh)  # lines that are not records are never thrown away
            for r in scan.records:
                k = record_key(r) + (r.face_index,)
                if k not in have:
                    new.setdefault(k, r)
        writer = RecordWriter(self.out)
        try:
            for r in sorted(new.values(), key=lambda r: (rank_of.get(r.path, len(rank_of)), r.face_index or 0)):
                writer.write(r)
        finally:
            writer.close()
        for sh in shards:
            if sh in keep:
                _warn(f"x2dfd: kept '{sh}': it has lines that are not records (its records are in '{self.out}')")
                continue
            try:
                sh.unlink()
            except OSError:
                pass


def archive_run(out: Path, conf: Path, shards: list[Path]) -> Path:
    """--force-new-run: move an earlier run's JSONL, config and shard files aside (nothing is deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = out.with_name(f"{out.stem}.run-{stamp}{out.suffix}")
    n = 1
    while moved.exists() or config_path(moved).exists():
        n += 1
        moved = out.with_name(f"{out.stem}.run-{stamp}-{n}{out.suffix}")
    try:
        if out.exists():
            os.replace(out, moved)
        if conf.exists():
            os.replace(conf, config_path(moved))
        for sh in shards:
            os.replace(sh, sh.with_name(sh.name.replace(out.stem, moved.stem, 1)))
    except OSError as err:
        raise OutputError(f"--force-new-run: cannot move the earlier run '{safe_text(out)}' aside: "
                          f"{os_reason(err)}") from None
    return moved


def check_run(cfg: ExplainConfig, out: Path, shards: Shards, command: str) -> dict[str, Any]:
    """Under the lock, before anything is loaded: refuse an --out that is not x2dfd's or that holds a run with
    other settings (unless --force-new-run, which moves it aside). Returns this run's resolved config."""
    conf = config_path(out)
    new_config = resolved_config(cfg, command)
    new_ident = run_identity(new_config)
    scan = scan_jsonl(out)  # raises for a file that is not x2dfd's
    old = read_run_config(conf)
    if old is not None:
        old_ident = run_identity(old["config"])
        keys = list(new_ident)
    else:
        old_ident = _records_identity(scan.records + [r for sh in shards.shard_files() for r in scan_jsonl(sh).records])
        keys = list(old_ident or {})
        if old_ident is not None:
            new_ident = {**new_ident, "experts": sorted(e.partition("=")[0].strip() for e in new_ident["experts"])}
    diffs = _differences(old_ident or {}, new_ident, keys)
    has_records = bool(scan.records) or any(scan_jsonl(sh).records for sh in shards.shard_files())
    if diffs and (has_records or old is not None):
        if cfg.force_new_run:
            moved = archive_run(out, conf, shards.shard_files())
            _warn(f"x2dfd {command}: --force-new-run: the earlier run is kept as '{moved}' (and its config); "
                  f"starting a new run in '{out}'")
        else:
            raise UsageError(f"'{safe_text(out)}' holds a run with other settings ({'; '.join(diffs)}); give a new "
                             "--out file, or add --force-new-run to move that run aside and start a new one "
                             "(nothing is deleted)")
    return new_config


def check_resolved_precision(cfg: ExplainConfig, out: Path, shards: Shards, explainer, command: str) -> None:
    """After loading: ``--dtype auto`` (and what it chooses on a CPU: float32, bfloat16 or NF4) is resolved by the
    machine, so a resumed run can load the same options at another precision (another GPU, less free memory). Its
    records must not join the earlier ones: refused in one line, or the earlier run moved aside by --force-new-run."""
    if explainer.mllm is None:
        return
    old = read_run_config(config_path(out))
    before = (old or {}).get("mllm") or {}
    now = explainer.mllm.describe()
    diffs = [f"{k} as loaded: {_short(before[k])} -> {_short(now.get(k))}" for k in ("dtype", "quantization")
             if k in before and before[k] != now.get(k)]
    if not diffs or not (scan_jsonl(out).records or any(scan_jsonl(sh).records for sh in shards.shard_files())):
        return
    if cfg.force_new_run and shards.world == 1:
        moved = archive_run(out, config_path(out), shards.shard_files())
        _warn(f"x2dfd {command}: --force-new-run: the earlier run is kept as '{moved}' (and its config); "
              f"starting a new run in '{out}'")
        return
    raise UsageError(f"'{safe_text(out)}' holds a run whose model loaded at another precision ({'; '.join(diffs)}); "
                     "give a new --out file, fix the precision with --dtype, or add --force-new-run to move that run "
                     "aside (nothing is deleted)")


# ------------------------------------------------------------------------------------------ summary
def summary_table(records: list[Record], limit: int = 40) -> str:
    """A readable summary: one row per record (first ``limit``), label counts, and every error. Untrusted
    text (file names, errors) is escaped: it cannot break the table or reach the terminal raw."""
    counts = Counter(r.label for r in records)
    rows = [("file", "label", "p_fake", "experts", "note")]
    for r in records[:limit]:
        name = safe_text(Path(str(r.path)).name) + (f"#face{r.face_index}" if r.face_index is not None else "")
        experts = " ".join(f"{safe_text(k)}={'N/A' if v is None else f'{v:.3f}'}" for k, v in r.experts.items())
        note = "error" if r.error else (f"{len(r.frames or [])} frames" if r.kind == "video" else "")
        p = "-" if r.p_fake is None else f"{r.p_fake:.3f}"
        rows.append((_cut(name, 48), safe_text(r.label), p, _cut(experts, 40), note))
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
        lines += [f"  {terminal_line(r.path, 300)}: {terminal_line(r.error, 500)}" for r in errors]
    return "\n".join(lines)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def failed_inputs(paths: list[str], records: list[Record]) -> list[str]:
    """Inputs without a verdict: no record, or none of its records (one per face) has a p_fake."""
    judged = {r.path for r in records if r.p_fake is not None}
    return [p for p in paths if p not in judged]


def outcome_line(command: str, paths: list[str], records: list[Record]) -> tuple[int, str]:
    """The exit status and the last stderr line: how many inputs failed (0 when all got a verdict)."""
    failed = failed_inputs(paths, records)
    n = len(paths)
    line = f"x2dfd {command}: {n} input{'s' if n != 1 else ''}, {n - len(failed)} with a verdict, {len(failed)} failed"
    if failed:
        line += " (no verdict: the error field of their records says why)"
        return EXIT_INPUTS_FAILED, line
    return EXIT_OK, line


# ------------------------------------------------------------------------------------------ the run
@dataclass
class ExplainRun:
    paths: list[str]  # this invocation's inputs, in order
    records: list[Record]  # records of those inputs (earlier runs' included when resuming --out)


def execute(cfg: ExplainConfig, command: str = "explain") -> ExplainRun:
    """Everything ``x2dfd explain`` does; the CLI's exit status comes from the result. ``--quiet`` silences
    x2dfd's notices for this run only."""
    from x2dfd.log import quieted

    with quieted(cfg.quiet):
        return _execute(cfg, command)


def _execute(cfg: ExplainConfig, command: str) -> ExplainRun:
    from tqdm.auto import tqdm

    from x2dfd.media import file_sha256

    paths = expand_inputs(cfg.inputs)
    if cfg.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    out = Path(cfg.out) if cfg.out else None
    shards = Shards(out)
    regular = out is not None and _is_regular_or_absent(out)
    locks: list[OutputLock] = []
    records: list[Record] = []
    writer = None
    try:
        error: X2DFDError | None = None
        resolved = None
        try:
            if out is not None and out.is_dir():
                raise OutputError(f"--out '{safe_text(out)}' is a directory [EISDIR]; give a file name, e.g. "
                                  f"'{safe_text(out / 'results.jsonl')}'")
            if regular:
                if shards.is_main:
                    locks.append(OutputLock(out).acquire())
                if shards.world > 1:
                    locks.append(OutputLock(shards.shard_path(shards.rank)).acquire())
                if shards.is_main:
                    resolved = check_run(cfg, out, shards, command)
            if cfg.report and shards.is_main:
                from x2dfd.report import check_report_dir

                check_report_dir(Path(cfg.report))  # before anything is written
        except X2DFDError as err:
            error = err
        shards.agree(error)
        cfg.device = shards.device(cfg.device)
        explainer = build_explainer(cfg)
        error = None
        try:
            if regular:
                check_resolved_precision(cfg, out, shards, explainer, command)
        except X2DFDError as err:
            error = err
        shards.agree(error)
        model = explainer.model_name
        done_records = shards.done() if regular else []
        done = {(r.path, r.sha256) for r in done_records if (r.model, r.adapter) == (model, explainer.adapter)}
        mine = shards.take(paths)
        todo = [p for p in mine if (p, _sha256_or_none(file_sha256, p)) not in done]
        if regular and shards.is_main:
            resolved["device"] = cfg.device
            info = {"command": command, "x2dfd_version": __version__, "config": resolved,
                    "processes": shards.world, "template_version": explainer.template_version,
                    "mllm": explainer.mllm.describe() if explainer.mllm else None,
                    "experts": [e.info() for e in explainer.experts],
                    "adapter_experts": getattr(explainer, "expert_check", None)}
            write_json_file(config_path(out), info)
        if not cfg.quiet and len(todo) < len(mine):
            _warn(f"resuming: {len(mine) - len(todo)} inputs already in {out}, {len(todo)} to go")
        writer = RecordWriter(shards.my_out())
        assets = None
        if cfg.report:
            from x2dfd.report import ReportAssets

            assets = ReportAssets(Path(cfg.report))
        bar = tqdm(total=len(todo), unit="file", desc=f"{command}[{shards.rank}]" if shards.world > 1 else command,
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
        shards.wait()
        if regular:
            shards.merge(paths)
        if regular and shards.is_main:
            wanted = set(paths)
            merged = [r for r in read_records(out, repair=False, warn=False) if r.path in wanted]
        elif out is not None and shards.is_main and done_records:
            merged = done_records + records
        else:
            merged = records
        if cfg.report and shards.is_main:
            from x2dfd.report import render_report

            # From the JSONL when there is one: its label_true fields reach the report's metrics.
            index = render_report(out if regular else merged, Path(cfg.report))
            if not cfg.quiet:
                _warn(f"report: {index}")
        return ExplainRun(paths if shards.is_main else mine, _latest(merged) if shards.is_main else records)
    except OutputError as err:
        written = len(records)
        raise OutputError(f"{err}; {written} of {len(paths)} inputs were written in this run") from None
    finally:
        for lock in reversed(locks):
            lock.release()


def _latest(records: list[Record]) -> list[Record]:
    """One record per (input, face): the last one written (a retried input replaces its earlier record)."""
    latest: dict[tuple, Record] = {}
    for r in records:
        key = (r.path, r.face_index)
        latest.pop(key, None)
        latest[key] = r
    return list(latest.values())


def run_explain(cfg: ExplainConfig) -> list[Record]:
    """Everything ``x2dfd explain`` does, callable from Python; returns the records of this run's inputs
    (earlier runs' included, when --out is given and resumed)."""
    return execute(cfg).records


def _sha256_or_none(file_sha256, path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def finish(command: str, cfg, run: ExplainRun) -> int:
    """Summary table (unless --quiet) and, always, the last stderr line with how many inputs failed."""
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK
    if not cfg.quiet and run.records:
        print(summary_table(run.records), file=sys.stderr)
    if getattr(cfg, "face_crop", False) and run.records:
        from x2dfd.cropcheck import CropWarner

        crops = CropWarner(f"x2dfd {command}", scale=getattr(cfg, "face_scale", 1.3))  # inputs that already are face crops
        crops.observe_records(run.records).warn(quiet=cfg.quiet)
    code, line = outcome_line(command, run.paths, run.records)
    print(line, file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExplainConfig, argv, prog="x2dfd explain")
    return finish("explain", cfg, execute(cfg))
