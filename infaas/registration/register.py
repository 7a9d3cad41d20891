"""Registering a model: validate, store, generate variants, measure them, write the catalogue.

Nothing is written before every input has been checked. Once writing starts, everything this
registration creates (repository objects, rows) is recorded, and removed again if a later step
fails, so a model is either fully registered or not at all.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..catalog import ModelInfo, ProfilePoint, TaskInfo, Variant, check_name
from ..consumers.executors import OrtExecutor, open_executor
from ..hardware import UnknownHardware, cost_per_1k
from ..proteus_profiles import linear_fit
from ..repository import Repository
from ..settings import Settings
from ..store import Store, now_ms
from . import profiler
from .validate import ModelCheck, RegistrationError, check_metric, check_model, check_task, load_validation
from .variants import Plan, VariantSpec, build_artifacts, plan_variants

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (what is happening, bases done, bases in all)
ACCURACY_CHUNK = 64  # rows per run when computing the registered model's accuracy


@dataclass
class RegistrationReport:
    model: ModelInfo
    task: TaskInfo
    variants: list[Variant]
    unchanged: bool = False  # the same file was registered before under this name: nothing new
    new_task: bool = False
    new_app: bool = False
    unavailable: dict[str, str] = field(default_factory=dict)  # "optimizer:hardware" -> why not built here
    skipped: dict[str, str] = field(default_factory=dict)  # optimizer -> why its build failed
    # "optimizer:hardware" -> {batch size: measured accuracy}. Per batch size because dynamic int8
    # quantization scales activations per batch: the same input can be classified differently
    # depending on the batch it runs in.
    accuracy: dict[str, dict[int, float]] = field(default_factory=dict)
    agreement: dict[str, dict[int, float]] = field(default_factory=dict)  # same keys: top-1 agreement with fp32
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.model
        if self.unchanged:
            return f"{m.model} v{m.version} ({m.task}) is already registered with this file: nothing new"
        bases = len({v.base_id for v in self.variants})
        return (f"registered {m.model} v{m.version} for task {m.task} (app {m.app_id}, "
                f"{'public' if m.public else 'private'}): {m.metric} {m.accuracy:.4f}, {len(self.variants)} variants "
                f"({bases} profiled) in {self.seconds.get('total', 0):.1f} s")


class _Undo:
    """What this registration created, so that a failure can take it back."""

    def __init__(self, store: Store, repository: Repository):
        self.store, self.repository = store, repository
        self.objects: list[str] = []
        self.actions: list[Callable[[], None]] = []

    def put_bytes(self, data: bytes, suffix: str) -> str:
        return self._track(self.repository, "put_bytes", data, suffix)

    def put_file(self, path: Path, suffix: str) -> str:
        return self._track(self.repository, "put_file", path, suffix)

    def _track(self, repository, method: str, source, suffix: str) -> str:
        from ..repository import sha256_bytes, sha256_file
        digest = sha256_bytes(source) if isinstance(source, bytes) else sha256_file(source)
        url = f"{repository.url}/sha256/{digest}{suffix}"
        existed = repository.exists(url)  # shared content (another model's object) is never removed
        url = getattr(repository, method)(source, suffix)
        if not existed:
            self.objects.append(url)
        return url

    def rollback(self) -> None:
        for action in reversed(self.actions):
            try:
                action()
            except Exception as err:  # keep undoing the rest; report what could not be undone
                log.error("rollback step failed: %s", err)
        for url in self.objects:
            try:
                self.repository.delete(url)
            except Exception as err:
                log.error("rollback could not delete %s: %s", url, err)


def register_model(settings: Settings, app_id: str, task: str, architecture: str, onnx_path: str | Path,
                   validation_path: str | Path, public: bool = False, metric: str = "top1", quick: bool = False,
                   *, name: str | None = None, hardware: Sequence[str] | None = None, store: Store | None = None,
                   on_progress: Progress | None = None) -> RegistrationReport:
    """Register an ONNX model for `task` under `app_id`, generate and profile its variants.

    `name` is the model's name (default: `architecture`); `hardware` restricts the hardware kinds
    variants are generated for (catalogue names; default: what this host has). Raises
    RegistrationError, with nothing stored, when anything is wrong."""
    started = time.perf_counter()
    name = name or architecture
    try:
        for kind, value in (("app", app_id), ("task", task), ("model", name)):
            check_name(kind, value)
        plan = plan_variants(settings, hardware)
    except (ValueError, UnknownHardware) as err:
        raise RegistrationError(str(err)) from None
    if not architecture or len(architecture) > 200:
        raise RegistrationError("architecture must be a non-empty name of at most 200 characters")
    check = check_model(settings, onnx_path)
    metric = check_metric(metric, check)
    inputs, labels = load_validation(settings, validation_path, check)
    own = store is None
    store = store or Store(settings).connect()
    try:
        job = _Registration(settings, store, app_id, task, architecture, name, public, metric, quick, plan,
                            check, inputs, labels, Path(validation_path), on_progress or (lambda *a: None))
        job.seconds["validate"] = time.perf_counter() - started
        report = job.run()
        report.seconds["total"] = time.perf_counter() - started
        return report
    finally:
        if own:
            store.close()


class _Registration:
    def __init__(self, settings: Settings, store: Store, app_id: str, task: str, architecture: str, name: str,
                 public: bool, metric: str, quick: bool, plan: Plan, check: ModelCheck, inputs: np.ndarray,
                 labels: np.ndarray, validation_path: Path, progress: Progress):
        self.settings, self.store = settings, store
        self.app_id, self.task, self.architecture, self.name = app_id, task, architecture, name
        self.public, self.metric, self.quick, self.plan, self.check = public, metric, quick, plan, check
        self.inputs, self.labels, self.validation_path, self.progress = inputs, labels, validation_path, progress
        self.repository = Repository.from_settings(settings)
        self.seconds: dict[str, float] = {}
        self.catalog = settings.hardware_catalog or None

    def run(self) -> RegistrationReport:
        versions = self.store.model_versions(self.name)
        self._check_names_apart()
        same = self._check_ownership(versions)
        if same is not None:
            return self._unchanged(same)
        self.version = versions[0]["version"] + 1 if versions else 1
        with tempfile.TemporaryDirectory(prefix="infaas-register-") as tmp:
            self.workdir = Path(tmp)
            model_path = self.workdir / "model.onnx"
            model_path.write_bytes(self.check.data)
            reference = self._reference(model_path)
            existing_task = self.store.get_task(self.task)
            classes = self.check.num_classes or (existing_task.num_classes if existing_task else
                                                 int(self.labels.max()) + 1)
            task_info = check_task(existing_task, self.task, self.check, classes)
            undo = _Undo(self.store, self.repository)
            try:
                return self._register(model_path, reference, task_info, existing_task is None, undo)
            except BaseException as err:
                undo.rollback()
                if isinstance(err, RegistrationError):
                    raise
                if isinstance(err, Exception):
                    raise RegistrationError(f"registration of {self.name} failed and was rolled back: "
                                            f"{type(err).__name__}: {err}") from err
                raise

    # --- before writing -----------------------------------------------------------------------
    def _check_names_apart(self) -> None:
        """A name in a request (the V2 gateway's URL) is a model or a task, never both."""
        if self.name == self.task or self.store.get_task(self.name) is not None:
            raise RegistrationError(f"model name {self.name!r} is the name of a task; choose another name")
        if self.store.model_versions(self.task):
            raise RegistrationError(f"task name {self.task!r} is the name of a model; choose another name")

    def _check_ownership(self, versions: list[dict]) -> dict | None:
        if not versions:
            return None
        head = versions[0]
        if head["task"] != self.task:
            raise RegistrationError(f"model name {self.name!r} is already registered for task {head['task']!r}; "
                                    "choose another name")
        if head["app_id"] != self.app_id:
            raise RegistrationError(f"model name {self.name!r} belongs to app {head['app_id']!r}; choose another name")
        return next((v for v in versions if v["sha256"] == self.check.sha256), None)

    def _unchanged(self, version: dict) -> RegistrationReport:
        model = self.store.get_model(self.name, version["version"])
        variants = [v for v in self.store.variants_for_model(self.task, self.name)
                    if v.model_version == model.version]
        return RegistrationReport(model, self.store.get_task(self.task), variants, unchanged=True,
                                  unavailable=self.plan.unavailable, seconds=dict(self.seconds))

    def _reference(self, model_path: Path) -> np.ndarray:
        """The fp32 model's top-k on the validation set (ONNX Runtime, the file as registered)."""
        k = profiler.metric_k(self.metric)
        try:
            with OrtExecutor(model_path, threads=1) as executor:
                outputs = executor.run(self.inputs[:2])
                top = profiler.predict(executor, self.inputs, ACCURACY_CHUNK, k)
        except Exception as err:
            raise RegistrationError(f"onnxruntime cannot run the model on the validation inputs: {err}") from None
        first = np.asarray(outputs[0])
        if self.check.num_classes and first.shape[1:] != (self.check.num_classes,):
            raise RegistrationError(f"the model's first output has shape {first.shape} at runtime, not "
                                    f"[batch, {self.check.num_classes}] as declared")
        return top

    # --- writing ------------------------------------------------------------------------------
    def _register(self, model_path: Path, reference: np.ndarray, task_info: TaskInfo, new_task: bool,
                  undo: _Undo) -> RegistrationReport:
        t = time.perf_counter()
        artifact = undo.put_bytes(self.check.data, ".onnx")
        validation = undo.put_file(self.validation_path, ".npz")
        built, skipped = self._build(model_path, undo)
        self.seconds["build"] = time.perf_counter() - t
        t = time.perf_counter()
        accuracy, agreement = self._accuracies(built, reference)
        self.seconds["accuracy"] = time.perf_counter() - t
        t = time.perf_counter()
        specs = [s for s in self.plan.specs if s.optimizer in built]
        profiles = self._profile(specs, built)
        self.seconds["profile"] = time.perf_counter() - t
        t = time.perf_counter()
        model = ModelInfo(self.task, self.name, self.version, self.app_id, self.public, self.architecture, artifact,
                          self.check.sha256, len(self.check.data), self.metric,
                          profiler.accuracy(reference, self.labels), self.check.input_name,
                          self.check.output_names, validation, now_ms())
        variants, points = self._rows(specs, built, profiles, accuracy, model)
        new_app = self._write(model, task_info, new_task, variants, points, undo)
        self.seconds["store"] = time.perf_counter() - t
        return RegistrationReport(model, task_info, variants, new_task=new_task, new_app=new_app,
                                  unavailable=dict(self.plan.unavailable), skipped=skipped, accuracy=accuracy,
                                  agreement=agreement, seconds=dict(self.seconds))

    def _build(self, model_path: Path, undo: _Undo) -> tuple[dict[str, dict[int, str]], dict[str, str]]:
        """Build each optimizer's artifact(s) in a bounded pool; a failed optimizer is skipped with its reason."""
        optimizers = self.plan.optimizers
        built: dict[str, dict[int, str]] = {}
        skipped: dict[str, str] = {}
        self.progress("building artifacts", 0, len(self.plan.specs))
        with ThreadPoolExecutor(max_workers=self.settings.registration_workers) as pool:
            futures = {o: pool.submit(build_artifacts, o, model_path, self.workdir / o, self.settings,
                                      self.plan.batch_sizes) for o in optimizers}
            for optimizer, future in futures.items():
                try:
                    paths = future.result()
                except Exception as err:
                    if optimizer == "ort-fp32":
                        raise RegistrationError(f"onnxruntime cannot optimise the model: {err}") from None
                    log.warning("skipping %s variants of %s: %s", optimizer, self.name, err)
                    skipped[optimizer] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                    continue
                urls = {key: undo.put_file(path, _suffix(path)) for key, path in paths.items()}
                built[optimizer] = {b: urls.get(b, urls.get(None)) for b in self.plan.batch_sizes}
        return built, skipped

    def _accuracies(self, built: dict[str, dict[int, str]], reference: np.ndarray):
        """Each artifact's own accuracy on the validation set, run in batches of each variant batch
        size, and its top-1 agreement with the fp32 model (not timed, so run in a bounded pool)."""
        k = profiler.metric_k(self.metric)
        jobs = {}
        for spec in self.plan.specs:
            for batch in self.plan.batch_sizes:
                key = (f"{spec.optimizer}:{spec.hardware}", batch)
                if spec.optimizer in built and key not in jobs:
                    jobs[key] = (spec, built[spec.optimizer][batch], batch)

        def measure(spec: VariantSpec, url: str, batch: int) -> np.ndarray:
            variant = _template(self, spec, batch)
            with open_executor(replace(variant, threads=1), self.repository.fetch(url)) as executor:
                return profiler.predict(executor, self.inputs, batch, k)

        with ThreadPoolExecutor(max_workers=self.settings.registration_workers) as pool:
            futures = {key: pool.submit(measure, *job) for key, job in jobs.items()}
            tops = {key: future.result() for key, future in futures.items()}
        accuracy: dict[str, dict[int, float]] = {}
        agreement: dict[str, dict[int, float]] = {}
        for (key, batch), top in sorted(tops.items()):
            accuracy.setdefault(key, {})[batch] = profiler.accuracy(top, self.labels)
            agreement.setdefault(key, {})[batch] = float(np.mean(top[:, 0] == reference[:, 0]))
        return accuracy, agreement

    def _profile(self, specs: list[VariantSpec], built: dict[str, dict[int, str]]) -> dict[VariantSpec, object]:
        budget = profiler.Budget.from_settings(self.settings, self.quick)
        profiles = {}
        for index, spec in enumerate(specs):
            self.progress(f"profiling {spec.base_id(self.name)}", index, len(specs))
            with profiler.exclusive_timing(self.settings):
                profiles[spec] = profiler.profile_base(
                    _template(self, spec, max(self.plan.batch_sizes)), self.repository.fetch,
                    built[spec.optimizer], self.inputs, self.plan.batch_sizes, budget)
        self.progress(f"profiled {self.name}", len(specs), len(specs))
        return profiles

    def _rows(self, specs, built, profiles, accuracy, model: ModelInfo) -> tuple[list[Variant], list[ProfilePoint]]:
        variants, points = [], []
        stamp = now_ms()
        for spec in specs:
            profile = profiles[spec]
            batches = sorted(profile.timings)
            slope, intercept = linear_fit(batches, [profile.timings[b].p50_ms for b in batches])
            base = spec.base_id(self.name)
            for batch in batches:
                timing = profile.timings[batch]
                url = built[spec.optimizer][batch]
                points.append(ProfilePoint(base, batch, timing.p50_ms, timing.p99_ms, timing.mean_ms,
                                           timing.throughput_qps, timing.runs))
                variants.append(replace(
                    _template(self, spec, batch), variant_id=spec.variant_id(self.name, batch), artifact=url,
                    artifact_bytes=self.repository.fetch(url).stat().st_size,
                    accuracy=accuracy[f"{spec.optimizer}:{spec.hardware}"][batch], load_ms=profile.load_ms,
                    latency_p50_ms=timing.p50_ms, latency_p99_ms=timing.p99_ms, slope_ms=slope,
                    intercept_ms=intercept, throughput_qps=timing.throughput_qps,
                    peak_memory_mb=profile.peak_memory_mb,
                    cost_per_1k=cost_per_1k(spec.hardware, spec.threads, batch, timing.p50_ms, self.catalog),
                    profiled_at=stamp))
        return variants, points

    def _write(self, model: ModelInfo, task_info: TaskInfo, new_task: bool, variants: list[Variant],
               points: list[ProfilePoint], undo: _Undo) -> bool:
        """Rows in an order that keeps readers consistent: profiles, variants, then the model row.
        A new version replaces the previous one's variants; on failure those are put back."""
        store = self.store
        new_app = store.get_app(self.app_id) is None
        if new_app:
            undo.actions.append(lambda: store.delete_app(self.app_id))
            store.put_app(self.app_id, "created by model registration")
        if new_task:
            undo.actions.append(lambda: store.delete_task(self.task))
            store.put_task(replace(task_info, created_at=now_ms()))
        previous = store.variants_for_model(self.task, self.name)
        old_points = {b: store.profiles(b) for b in {v.base_id for v in previous}}
        undo.actions.append(lambda: self._restore(previous, old_points, variants, points))
        store.delete_profiles(old_points)  # the new version's batch sizes may differ: no stale points
        for point in points:
            store.put_profile(point)
        for variant in variants:
            store.put_variant(variant)
        undo.actions.append(lambda: store.delete_model(self.task, self.name, self.version))
        store.put_model(model)
        fresh = {v.variant_id for v in variants}
        store.delete_variants(self.task, [v.variant_id for v in previous if v.variant_id not in fresh])
        return new_app

    def _restore(self, previous: list[Variant], old_points: dict, variants: list[Variant],
                 points: list[ProfilePoint]) -> None:
        self.store.delete_variants(self.task, [v.variant_id for v in variants])
        self.store.delete_profiles({p.variant_id for p in points})
        for variant in previous:
            self.store.put_variant(variant)
        for rows in old_points.values():
            for point in rows:
                self.store.put_profile(point)


def _template(job: _Registration, spec: VariantSpec, batch: int) -> Variant:
    """A variant row with its identity filled in and its measurements still empty."""
    return Variant(task=job.task, variant_id=spec.variant_id(job.name, batch), model=job.name,
                   model_version=job.version, app_id=job.app_id, public=job.public, optimizer=spec.optimizer,
                   hardware=spec.hardware, threads=spec.threads, batch_size=batch, artifact="", artifact_bytes=0,
                   accuracy=0.0, load_ms=0.0, latency_p50_ms=0.0, latency_p99_ms=0.0, slope_ms=0.0,
                   intercept_ms=0.0, throughput_qps=0.0, peak_memory_mb=0.0, cost_per_1k=0.0, source="measured")


def _suffix(path: Path) -> str:
    """`model.int8.onnx` -> `.int8.onnx`: the repository object keeps what kind of artifact it is."""
    return "".join(path.suffixes)
