"""The one explain pipeline: path -> decode -> face crop -> experts -> prompt -> MLLM -> Record.

    explainer = Explainer(mllm, experts, PipelineOptions())
    for record in explainer.run(["face.jpg", "clip.mp4"]):
        print(record.label, record.p_fake)

Used by ``x2dfd explain``, ``x2dfd expert score``, the demo and the evaluation. Every input yields a
record: a file that cannot be decoded or has no face becomes ``undetermined`` with a one-line
``error``, and the batch goes on. Inputs are processed in small chunks so records stream out as
they finish (the JSONL writer flushes each one).

Stages overlap: ``workers`` threads decode and detect faces (hash, decode, res10 SSD, dlib landmarks,
crop) for the inputs ahead, while the calling thread runs the experts and the MLLM on the current
chunk. OpenCV, Pillow's decoder and torch release the GIL, so the threads really run side by side.
Workers run OpenCV single-threaded (and the blending expert runs torch single-threaded on CPU):
single-threaded lanes side by side beat two-thread kernels that wait on each other, above all on a
machine shared with other jobs. Chunks, batches and record order are exactly those of the
sequential path (``workers=0``), so the records are identical.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from x2dfd.prompts import format_expert_score, render_template, template_version
from x2dfd.errors import UsageError, X2DFDError
from x2dfd.inputs import media_kind
from x2dfd.records import DEFAULT_THRESHOLD, Record, label_from_p, one_line

QUESTION_TEMPLATE = "explain.jinja"
Input = Any  # str | os.PathLike (a file) | PIL.Image.Image | numpy.ndarray | tuple[str, picture]
AGGREGATES = ("mean", "median", "max", "topk", "segments")


@dataclass
class PipelineOptions:
    batch_size: int = 4
    """Faces per MLLM forward pass (batched with left padding)."""
    max_new_tokens: int = 128
    """Length limit of the generated explanation (0: verdict only, no text)."""
    threshold: float = DEFAULT_THRESHOLD
    """p_fake at or above this is labelled fake."""
    face_crop: bool = True
    """Detect the face and crop it the DeepfakeBench way (square, 1.3x the box); --no-face-crop for inputs that are already face crops."""
    all_faces: bool = False
    """Explain every face in an image (one record each, largest first) instead of only the largest."""
    align: bool = False
    """Rotate each face so the eyes are level (68-point landmarks) before cropping."""
    face_scale: float = 1.3
    """Crop side as a multiple of the detected face box (DeepfakeBench uses 1.3)."""
    min_face_score: float = 0.5
    """Minimum face-detector confidence."""
    frames: int = 16
    """Frames sampled uniformly from each video."""
    aggregate: str = field(default="mean", metadata={"choices": list(AGGREGATES)})
    """How frame p_fake values become the video's p_fake: mean (DeepfakeBench's video metric), median, max, topk, or segments (the mean of the strongest manipulated segment: for videos swapped only in part; bench/bench_video_aggregate.py)."""
    topk: int = 3
    """k for --aggregate topk (mean of the k most fake-looking frames)."""
    max_pixels: int = 64_000_000
    """Images with more pixels are refused (decompression-bomb guard)."""
    max_file_mb: float = 200.0
    """Image files larger than this are refused."""
    max_video_mb: float = 2048.0
    """Video files larger than this are refused."""
    workers: int | None = None
    """Threads that decode inputs and detect faces ahead of the experts and the MLLM (default: one per CPU core, at most 4; 0: everything in the calling thread)."""
    uncertain_band: str = field(default="auto", metadata={"metavar": "LOW,HIGH"})
    """LOW,HIGH: a record's three-way verdict is real below LOW, fake at or above HIGH, uncertain in between; auto (default): --threshold -/+ 0.15, i.e. 0.35,0.65 (a convention: the shipped expert is not calibrated); LOW=HIGH: no uncertain band."""
    localize: bool = True
    """Compute the localizing expert's heatmap for every face, so the evidence says where it concentrates (--no-localize: about a third less expert time, no location sentence)."""

    def band(self) -> tuple[float, float]:
        """``uncertain_band`` as (low, high)."""
        from x2dfd.evidence import band_around, parse_band

        if str(self.uncertain_band).strip().lower() == "auto":
            return band_around(self.threshold)
        return parse_band(self.uncertain_band)

    def media_limits(self):
        """The decoding limits these options set (one place: every command decodes through them)."""
        from x2dfd.media import MediaLimits

        return MediaLimits(max_pixels=self.max_pixels, max_file_mb=self.max_file_mb, max_video_mb=self.max_video_mb)

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 0:
            raise UsageError(f"--max-new-tokens must be >= 0, got {self.max_new_tokens}")
        if not 0.0 < self.threshold < 1.0:
            raise UsageError(f"--threshold must be in (0, 1), got {self.threshold}")
        if self.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {self.frames}")
        if self.aggregate not in AGGREGATES:
            raise UsageError(f"--aggregate '{self.aggregate}' is unknown. Available: {', '.join(AGGREGATES)}.")
        if self.face_scale < 1.0:
            raise UsageError(f"--face-scale must be >= 1.0, got {self.face_scale}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        try:
            lo, hi = self.band()
        except ValueError as err:
            raise UsageError(str(err)) from None
        if not lo <= self.threshold <= hi:
            raise UsageError(f"--uncertain-band {self.uncertain_band} must contain --threshold {self.threshold:g}")

    def resolved_workers(self) -> int:
        """``workers``, with None (auto) resolved: one per usable CPU core, at most 4. (On 2 cores, 2 workers
        beside the expert thread kept both cores busy: 20 images/s against 15 with one worker.)"""
        if self.workers is not None:
            return self.workers
        return max(1, min(4, usable_cpus()))


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class Artifacts:
    """Pictures behind a record (not serialised into it): the face crop the verdict is about and, when an
    expert can localize, its heatmap (float HxW in [0, 1] at the crop's size). For videos: the explained frame."""

    face: Any = None  # PIL.Image.Image
    heatmap: Any = None  # numpy.ndarray
    frame_index: int | None = None
    frame_image: Any = None  # PIL.Image.Image of the explained video frame
    landmarks: Any = None  # numpy (68, 2) landmarks in face-crop pixels (None without a face crop)


@dataclass
class _Sample:
    """One face crop on its way through experts and the MLLM."""

    crop: Any  # x2dfd.face.FaceCrop
    face_index: int | None = None
    frame: Any = None  # x2dfd.media.VideoFrame for videos
    experts: dict[str, float | None] = field(default_factory=dict)
    p_fake: float | None = None
    explanation: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    heatmap: Any = None  # numpy.ndarray from the expert pass that scored it (reports), else computed on demand


@dataclass
class _Unit:
    """One input file: its base record and its samples (faces, or video frames)."""

    record: Record
    samples: list[_Sample] = field(default_factory=list)
    frame_errors: list[dict[str, Any]] = field(default_factory=list)


class Explainer:
    """Runs the pipeline with a loaded MLLM (or None: expert-only verdicts) and loaded experts."""

    def __init__(self, mllm, experts: list, options: PipelineOptions, transform=None):
        self.transform = transform  # Callable[[PIL.Image], PIL.Image] | None: applied to each decoded image / frame
        self.progress = None  # Callable[[str, int, int], None] | None: (stage "faces" | "judge", done, total); the demo's bar
        if mllm is None and not experts:
            raise UsageError("no MLLM (--mllm none) and no expert (--no-expert): nothing could give a verdict")
        self.mllm = mllm
        self.experts = list(experts)
        self.options = options
        self.model_name = mllm.options.model if mllm is not None else None
        self.adapter = mllm.options.adapter if mllm is not None else None
        self.template_version = (getattr(mllm, "preset_version", None) or template_version(QUESTION_TEMPLATE)
                                 if mllm is not None else None)  # a preset's prompt is versioned by x2dfd.presets

    # ------------------------------------------------------------------------------------------ public
    def run(self, paths: Iterable[Input]) -> Iterator[Record]:
        """Yield one record per input (per face with ``all_faces``) as soon as its chunk is done.

        An input is a path (image or video file), or an in-memory picture: a PIL image or a numpy
        array (HxW, HxWx3 RGB, HxWx4 RGBA), recorded as ``<memory:N>`` (N counts from 0 in this call)
        or as ``(name, picture)`` to give it a name of your own."""
        for record, _ in self.run_with_artifacts(paths, heatmaps=False):
            yield record

    def run_with_artifacts(self, paths: Iterable[Input], heatmaps: bool = True) -> Iterator[tuple[Record, Artifacts]]:
        """Like :meth:`run`, also yielding the face crop (and the first localizing expert's heatmap) that
        each record's verdict is about: what the report and the demo show. Heatmaps are made whenever
        ``options.localize`` is on (the evidence says where they concentrate), whatever ``heatmaps`` says."""
        heatmaps = heatmaps or self.options.localize
        items = iter(paths)
        head = list(itertools.islice(items, 2))  # a single input (the demo) gains nothing from workers
        items = itertools.chain(head, items)
        workers = self.options.resolved_workers() if len(head) > 1 else 0
        units = self._prepared_parallel(items, workers) if workers > 0 else self._prepared_sequential(items)
        chunk: list[_Unit] = []
        pending = 0
        for unit in units:
            chunk.append(unit)
            pending += len(unit.samples)
            if pending >= self.options.batch_size:
                yield from self._finish_chunk(chunk, heatmaps)
                chunk, pending = [], 0
        if chunk:
            yield from self._finish_chunk(chunk, heatmaps)

    def _prepare_any(self, item: Input, n: int) -> _Unit:
        """Decode + face crop of input number ``n``; never raises (the per-item error boundary)."""
        try:
            if isinstance(item, (str, os.PathLike)):
                return self._prepare(item)
            return self._prepare_memory(item, n)
        except Exception as err:  # noqa: BLE001 - e.g. an unhashable path type: still one record, not a crash
            name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<memory:{n}>"
            unit = self._new_unit(str(name), "image")
            unit.record.error = one_line(f"'{name}': {type(err).__name__}: {err}")
            return unit

    def _prepared_sequential(self, paths: Iterable[Input]) -> Iterator[_Unit]:
        for n, item in enumerate(paths):
            yield self._prepare_any(item, n)

    def _prepared_parallel(self, paths: Iterable[Input], workers: int) -> Iterator[_Unit]:
        """Units in input order, prepared by ``workers`` threads up to ``ahead`` inputs in advance.

        The input iterable is only read here (by the calling thread), a few items at a time."""
        from concurrent.futures import ThreadPoolExecutor

        import cv2

        if self.options.face_crop:
            from x2dfd.face import get_detector

            get_detector()  # load the detector once, here, not in every worker at the same time
        ahead = max(2 * workers, 2 * self.options.batch_size)
        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="x2dfd-prepare")
        queue: deque = deque()
        try:
            for n, item in enumerate(paths):
                queue.append(pool.submit(self._prepare_any, item, n))
                if len(queue) >= ahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            for future in queue:
                future.cancel()
            pool.shutdown(wait=True)
            cv2.setNumThreads(cv2_threads)

    def question(self, experts: dict[str, float | None]) -> str:
        """The explain question with the experts' scores in X2-DFD's wording (a preset's own, when it has one)."""
        if getattr(getattr(self.mllm, "preset", None), "question", None):
            return self.mllm.preset.render_question(experts)
        shown = [
            {"prompt_name": e.prompt_name, "score": format_expert_score(experts.get(e.name))} for e in self.experts
        ]
        return render_template(QUESTION_TEMPLATE, experts=shown)

    # ------------------------------------------------------------------------------------------ stages
    def _new_unit(self, path: str, kind: str) -> _Unit:
        return _Unit(Record(path=path, kind=kind, model=self.model_name, adapter=self.adapter,
                            template_version=self.template_version, mode="mllm" if self.mllm else "expert-only"))

    def _prepare_memory(self, item, n: int) -> _Unit:
        """An in-memory picture (Python API): the same face crop and record as a decoded file."""
        from x2dfd.media import image_from_memory, memory_sha256

        t0 = time.perf_counter()
        name, picture = item if isinstance(item, tuple) and len(item) == 2 else (f"<memory:{n}>", item)
        unit = self._new_unit(str(name), "image")
        try:
            image = image_from_memory(picture, str(name), self.options.media_limits())
            unit.record.sha256 = memory_sha256(image)
            self._crop_image(unit, image)
        except X2DFDError as err:
            unit.record.error = one_line(str(err))
        except Exception as err:  # noqa: BLE001 - per-item boundary, as for files
            unit.record.error = one_line(f"'{name}': {type(err).__name__}: {err}")
        unit.record.timings["decode+face"] = time.perf_counter() - t0
        return unit

    def _prepare(self, path: str | os.PathLike) -> _Unit:
        """Decode and crop faces; any failure becomes the unit's error (its record is then final)."""
        from x2dfd.media import file_sha256

        t0 = time.perf_counter()
        path = os.fspath(path)
        kind = media_kind(path)
        unit = self._new_unit(path, kind)
        record = unit.record
        limits = self.options.media_limits()
        try:
            record.sha256 = file_sha256(path)
        except OSError as err:
            record.error = one_line(f"cannot read '{path}': {err.strerror or err}")
            return unit
        try:
            if kind == "video":
                self._prepare_video(unit, limits)
            else:
                self._prepare_image(unit, limits)
        except X2DFDError as err:  # MediaError, NoFaceError: a result, not a crash
            record.error = one_line(str(err))
        except Exception as err:  # noqa: BLE001 - per-item boundary: record the cause, keep the batch going
            record.error = one_line(f"'{path}': {type(err).__name__}: {err}")
        record.timings["decode+face"] = time.perf_counter() - t0
        return unit

    def _prepare_image(self, unit: _Unit, limits) -> None:
        from x2dfd.media import load_image

        self._crop_image(unit, load_image(unit.record.path, limits))

    def _crop_image(self, unit: _Unit, image) -> None:
        from x2dfd.face import extract_faces

        image = self.transform(image) if self.transform is not None else image
        unit.record.media = {"width": image.width, "height": image.height}
        crops = extract_faces(image, **self._face_kwargs())
        many = self.options.all_faces and self.options.face_crop
        unit.samples = [_Sample(crop=c, face_index=i if many else None) for i, c in enumerate(crops)]

    def _prepare_video(self, unit: _Unit, limits) -> None:
        from x2dfd.errors import NoFaceError
        from x2dfd.face import extract_faces
        from x2dfd.media import sample_video

        frames, info = sample_video(unit.record.path, self.options.frames, limits)
        unit.record.media = dict(info)
        kwargs = self._face_kwargs() | {"all_faces": False}
        for n_done, frame in enumerate(frames, 1):
            self._tick("faces", n_done - 1, len(frames))
            try:
                [crop] = extract_faces(self.transform(frame.image) if self.transform is not None else frame.image,
                                       **kwargs)
            except NoFaceError as err:
                unit.frame_errors.append({"index": frame.index, "time_s": frame.time_s, "p_fake": None,
                                          "label": "undetermined", "face": None, "error": one_line(str(err))})
                continue
            unit.samples.append(_Sample(crop=crop, frame=frame))
        if not unit.samples:
            raise NoFaceError(f"no face found in any of the {len(frames)} sampled frames of '{unit.record.path}'")

    def _tick(self, stage: str, done: int, total: int) -> None:
        """Report progress to ``self.progress`` (never lets a failing callback cost the input)."""
        if self.progress is not None:
            try:
                self.progress(stage, done, total)
            except Exception:  # noqa: BLE001 - a progress bar is not worth a record
                pass

    def _face_kwargs(self) -> dict[str, Any]:
        o = self.options
        return dict(crop=o.face_crop, all_faces=o.all_faces, scale=o.face_scale, align=o.align,
                    min_score=o.min_face_score)

    def _score_experts(self, samples: list[_Sample], heatmaps: bool = False) -> None:
        """Expert scores for a batch. With ``heatmaps``, the first localizing expert that can give scores
        and heatmaps from one forward pass (``predict``) does so, and the heatmaps wait on the samples."""
        want_maps = heatmaps
        for expert in self.experts:
            t0 = time.perf_counter()
            try:
                predict = getattr(expert, "predict", None) if want_maps else None
                if predict is not None:
                    scores, maps = predict([s.crop.image for s in samples])
                    for s, m in zip(samples, maps):
                        s.heatmap = m
                    want_maps = False
                else:
                    scores = expert.score([s.crop.image for s in samples])
                for s, sc in zip(samples, scores):
                    s.experts[expert.name] = round(float(sc.p_fake), 6)
            except Exception as err:  # noqa: BLE001 - an expert that fails is "N/A", the MLLM still answers
                for s in samples:
                    s.experts[expert.name] = None
                    s.error = one_line(f"expert '{expert.name}' failed: {type(err).__name__}: {err}")
            dt = (time.perf_counter() - t0) / len(samples)
            for s in samples:
                s.timings["experts"] = s.timings.get("experts", 0.0) + dt

    def _judge(self, samples: list[_Sample], max_new_tokens: int) -> None:
        """MLLM verdicts for a batch; if the batch fails, retry one by one so only the bad item fails."""
        questions = [self.question(s.experts) for s in samples]
        try:
            results = self.mllm.judge([s.crop.image for s in samples], questions, max_new_tokens=max_new_tokens)
        except Exception as err:  # noqa: BLE001 - isolate the failing item below
            if len(samples) == 1:
                samples[0].error = one_line(f"MLLM failed: {type(err).__name__}: {err}")
                return
            for s in samples:
                self._judge([s], max_new_tokens)
            return
        for s, j in zip(samples, results):
            s.p_fake = j.p_fake
            if max_new_tokens > 0:
                s.explanation = j.explanation
            for k, v in j.timings.items():
                s.timings[k] = s.timings.get(k, 0.0) + v

    def _finish_chunk(self, units: list[_Unit], heatmaps: bool) -> Iterator[tuple[Record, Artifacts]]:
        samples = [s for u in units if u.record.error is None for s in u.samples]
        bs = self.options.batch_size
        for i in range(0, len(samples), bs):
            batch = samples[i : i + bs]
            self._tick("judge", i, len(samples))
            if self.experts:
                self._score_experts(batch, heatmaps)
            if self.mllm is not None:
                # Video frames get verdicts only; the video's explanation is generated once, below.
                images = [s for s in batch if s.frame is None]
                frames = [s for s in batch if s.frame is not None]
                if images:
                    self._judge(images, self.options.max_new_tokens)
                if frames:
                    self._judge(frames, 0)
            else:
                for s in batch:
                    s.p_fake = _expert_only_p(s.experts)
                    if s.p_fake is None and s.error is None:
                        s.error = "no expert could score this face"
        from x2dfd.evidence import annotate

        for unit in units:
            for record, sample in self._records(unit):
                artifacts = self._artifacts(sample, heatmaps)
                yield annotate(record, artifacts, self), artifacts

    def _artifacts(self, sample: _Sample | None, heatmaps: bool) -> Artifacts:
        if sample is None:
            return Artifacts()
        heatmap = sample.heatmap if heatmaps else None
        if heatmaps and heatmap is None:
            for expert in self.experts:
                localize = getattr(expert, "localize", None)
                if localize is None:
                    continue
                try:
                    [heatmap] = localize([sample.crop.image])
                except NotImplementedError:
                    continue
                except Exception:  # noqa: BLE001 - a missing picture must not cost the verdict
                    heatmap = None
                if heatmap is not None:
                    break
        frame = sample.frame
        return Artifacts(face=sample.crop.image, heatmap=heatmap, frame_index=frame.index if frame else None,
                         frame_image=frame.image if frame else None, landmarks=sample.crop.landmarks)

    def _records(self, unit: _Unit) -> Iterator[tuple[Record, _Sample | None]]:
        base = unit.record
        if base.error is not None:
            yield base, None
            return
        if base.kind == "video":
            yield self._video_record(unit)
            return
        for s in unit.samples:
            rec = Record(**{**base.to_dict(), "timings": dict(base.timings)})
            self._fill(rec, s)
            rec.face_index = s.face_index
            yield rec, s

    def _fill(self, rec: Record, s: _Sample) -> None:
        rec.p_fake = None if s.p_fake is None else round(float(s.p_fake), 6)
        rec.label = label_from_p(rec.p_fake, self.options.threshold)
        rec.explanation = s.explanation
        rec.experts = dict(s.experts)
        rec.face = s.crop.info() if s.crop.face is not None else None
        rec.error = s.error
        rec.timings.update({k: round(v, 6) for k, v in s.timings.items()})
        rec.timings["total"] = round(sum(v for k, v in rec.timings.items() if k != "total"), 6)

    def _video_record(self, unit: _Unit) -> tuple[Record, _Sample | None]:
        from x2dfd.media import aggregate_frames

        rec = unit.record
        o = self.options
        frames = list(unit.frame_errors)
        for s in unit.samples:
            p = None if s.p_fake is None else round(float(s.p_fake), 6)
            frames.append({"index": s.frame.index, "time_s": round(s.frame.time_s, 3), "p_fake": p,
                           "label": label_from_p(p, o.threshold), "experts": dict(s.experts),
                           "face": s.crop.info() if s.crop.face is not None else None, "error": s.error})
        frames.sort(key=lambda f: f["index"])
        rec.frames = frames
        rec.aggregate = o.aggregate if o.aggregate != "topk" else f"topk:{o.topk}"
        p = aggregate_frames([f["p_fake"] for f in frames], o.aggregate, k=o.topk)
        rec.p_fake = None if p is None else round(float(p), 6)
        rec.label = label_from_p(rec.p_fake, o.threshold)
        for name in {k for s in unit.samples for k in s.experts}:
            rec.experts[name] = aggregate_frames([s.experts.get(name) for s in unit.samples], o.aggregate, k=o.topk)
        scored = [s for s in unit.samples if s.p_fake is not None]
        best = None
        if rec.p_fake is None:
            rec.error = next((s.error for s in unit.samples if s.error), "no frame could be scored")
        elif scored:
            # Explain the frame that best supports the video's verdict: the most fake-looking one for a
            # fake verdict, the most real-looking one for a real verdict.
            key = (lambda s: s.p_fake) if rec.label == "fake" else (lambda s: -s.p_fake)
            best = max(scored, key=key)
            rec.face = best.crop.info() if best.crop.face is not None else None
            for f in rec.frames:
                f["explained"] = f["index"] == best.frame.index
            if self.mllm is not None and o.max_new_tokens > 0:
                self._judge([best], o.max_new_tokens)
                rec.explanation = best.explanation
        for s in unit.samples:
            for k, v in s.timings.items():
                rec.timings[k] = round(rec.timings.get(k, 0.0) + v, 6)
        rec.timings["total"] = round(sum(v for k, v in rec.timings.items() if k != "total"), 6)
        return rec, best


def _expert_only_p(experts: dict[str, float | None]) -> float | None:
    """Expert-only verdict: the mean p_fake of the experts that could run."""
    values = [v for v in experts.values() if v is not None]
    return sum(values) / len(values) if values else None
