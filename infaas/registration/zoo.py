"""The demo zoo: real classifiers of scikit-learn's bundled 8x8 digits (no download), registered
as public models of task `digits-classification` under app `demo`.

Every model takes `pixels` [N, 64] float32 (raw intensities 0..16, as the dataset has them) and
returns `probabilities` [N, 10] and `label` [N]. Graphs are written with `onnx.helper` from the
trained weights using standard operators only (Mul, MatMul, Add, Relu, Reshape, Conv, MaxPool,
Flatten, Softmax, ArgMax), so ONNX Runtime, its int8 quantizer (MatMul -> MatMulInteger) and
TVM's Relax frontend all accept them.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import Settings

log = logging.getLogger(__name__)
TASK = "digits-classification"
APP = "demo"
INPUT = "pixels"
OPSET = 17
SCALE = np.float32(1 / 16)  # dataset intensities are 0..16


@dataclass(frozen=True)
class ZooModel:
    name: str
    architecture: str
    build: Callable[[np.ndarray, np.ndarray, bool], object]  # (x_train, y_train, quick) -> onnx.ModelProto


# --- ONNX graph writing ---------------------------------------------------------------------------
class OnnxGraph:
    """Accumulates nodes and weights; `model()` wraps them with a zoo's signature: `input_name`
    [N, width] float32 in, `probabilities` [N, 10] and `label` [N] out."""

    def __init__(self, input_name: str = INPUT, width: int = 64, scale: np.float32 | None = SCALE):
        self.input_name, self.width = input_name, width
        self.nodes, self.weights, self.last = [], [], input_name
        if scale is not None:
            self.mul(scale)

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        self.weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, [self.last, *inputs], [out], **attrs))
        self.last = out
        return out

    def mul(self, scale: np.float32) -> str:
        return self.op("Mul", self.const("scale", np.asarray(scale, np.float32)))

    def dense(self, index: int, weight: np.ndarray, bias: np.ndarray, relu: bool) -> str:
        self.op("MatMul", self.const(f"w{index}", weight.astype(np.float32)))
        self.op("Add", self.const(f"b{index}", bias.astype(np.float32)))
        return self.op("Relu") if relu else self.last

    def model(self, name: str):
        from onnx import TensorProto, checker, helper
        from onnx.helper import make_node
        self.nodes.append(make_node("Softmax", [self.last], ["probabilities"], axis=1))
        self.nodes.append(make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, ["N", self.width])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
             helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])], self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="infaas-zoo")
        model.ir_version = 8  # readable by every ONNX Runtime and TVM we support
        checker.check_model(model, full_check=True)
        return model


# --- trainers -------------------------------------------------------------------------------------
def _logistic(x: np.ndarray, y: np.ndarray, quick: bool):
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(max_iter=200 if quick else 1000).fit(x * SCALE, y)
    graph = OnnxGraph()
    graph.dense(0, clf.coef_.T, clf.intercept_, relu=False)
    return graph.model("logreg")


def _mlp(hidden: tuple[int, ...], iters: tuple[int, int]):
    def build(x: np.ndarray, y: np.ndarray, quick: bool):
        from sklearn.neural_network import MLPClassifier
        clf = MLPClassifier(hidden, max_iter=iters[0] if quick else iters[1], random_state=0)
        clf.fit(x * SCALE, y)
        graph = OnnxGraph()
        for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
            graph.dense(i, w, b, relu=i < len(clf.coefs_) - 1)
        return graph.model("mlp-" + "x".join(map(str, hidden)))
    return build


def _cnn(x: np.ndarray, y: np.ndarray, quick: bool, filters: int = 16):
    """Conv(k-means filters, learned from 3x3 patches) -> ReLU -> 2x2 max-pool -> MLP(128).

    The convolution's filters are learned without labels (k-means centroids of image patches, as in
    Coates & Ng's single-layer networks); the classifier on the pooled feature maps is trained with
    labels. Features for training come from running the conv part itself with ONNX Runtime, so
    training and serving compute them identically."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.neural_network import MLPClassifier
    images = (x * SCALE).reshape(-1, 8, 8)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2)).reshape(-1, 9)
    patches = patches[np.random.default_rng(0).choice(len(patches), 20_000, replace=False)]
    centroids = MiniBatchKMeans(filters, random_state=0, n_init=3).fit(patches).cluster_centers_
    kernels = (centroids - centroids.mean(axis=1, keepdims=True)).reshape(filters, 1, 3, 3).astype(np.float32)
    graph = OnnxGraph()
    graph.op("Reshape", graph.const("image_shape", np.array([-1, 1, 8, 8], np.int64)))
    graph.op("Conv", graph.const("kernels", kernels), graph.const("kernel_bias", np.zeros(filters, np.float32)),
             pads=[1, 1, 1, 1])
    graph.op("Relu")
    graph.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    graph.op("Flatten", axis=1)
    features = _run_prefix(graph, x)
    clf = MLPClassifier((128,), max_iter=60 if quick else 300, random_state=0).fit(features, y)
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        graph.dense(i, w, b, relu=i < len(clf.coefs_) - 1)
    return graph.model("cnn")


def _run_prefix(graph: OnnxGraph, x: np.ndarray) -> np.ndarray:
    """Run the graph built so far with ONNX Runtime (its last tensor is the output)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    body = helper.make_graph(list(graph.nodes), "prefix",
                             [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 64])],
                             [helper.make_tensor_value_info(graph.last, TensorProto.FLOAT, None)],
                             list(graph.weights))
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: x.astype(np.float32)})[0]


ZOO = (
    ZooModel("logreg", "logistic-regression", _logistic),
    ZooModel("mlp-small", "mlp-32", _mlp((32,), (60, 300))),
    ZooModel("mlp-medium", "mlp-256x256", _mlp((256, 256), (20, 100))),
    ZooModel("mlp-large", "mlp-1024x1024", _mlp((1024, 1024), (8, 60))),
    ZooModel("cnn", "cnn-kmeans16-mlp128", _cnn),
)


# --- data and building ----------------------------------------------------------------------------
def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_valid, y_valid): a stratified 80/20 split of the bundled digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x_train, x_valid, y_train, y_valid = train_test_split(x.astype(np.float32), y.astype(np.int64), test_size=0.2,
                                                          stratify=y, random_state=seed)
    return x_train, y_train, x_valid, y_valid


def export_zoo(directory: Path, quick: bool = False, names: tuple[str, ...] | None = None,
               step: Callable[[str, int, int], None] | None = None) -> dict[str, Path]:
    """Train the zoo, write `<name>.onnx` files and `validation.npz` into `directory`; `step(what,
    done, total)` is called after each model."""
    import onnx
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_valid, y_valid = digits_split()
    np.savez(directory / "validation.npz", inputs=x_valid, labels=y_valid)
    chosen = [entry for entry in ZOO if not names or entry.name in names]
    files = {}
    for done, entry in enumerate(chosen, 1):
        started = time.perf_counter()
        with warnings.catch_warnings():  # quick mode stops training early on purpose
            warnings.simplefilter("ignore")
            model = entry.build(x_train, y_train, quick)
        files[entry.name] = directory / f"{entry.name}.onnx"
        onnx.save(model, str(files[entry.name]))
        log.info("trained %s in %.1f s", entry.name, time.perf_counter() - started)
        if step:
            step(f"trained {entry.name}", done, len(chosen))
    return files


# --- the zoos -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Zoo:
    """A zoo: the task and app it registers under, its models, and how to train and export them."""
    name: str
    task: str
    app: str
    models: tuple  # entries with .name and .architecture
    export: Callable[..., dict[str, Path]]  # (directory, quick, names, step) -> {model: onnx path}
    training_share: float  # the share of the progress bar training takes (the rest: registering)
    model_prefix: str = ""  # model names are global: the zoos' models must not collide (`logreg` in both)
    batch_sizes: tuple[int, ...] = ()  # the batch sizes its variants get (empty: the settings')


def zoos() -> dict[str, Zoo]:
    """`digits`: small and quick, the test suite's fixture; `mnist1d`: the demo's zoo with a Pareto front."""
    from . import zoo_mnist1d
    return {"digits": Zoo("digits", TASK, APP, ZOO, export_zoo, 0.1),
            "mnist1d": Zoo("mnist1d", zoo_mnist1d.TASK, zoo_mnist1d.APP, zoo_mnist1d.ZOO, zoo_mnist1d.export_zoo,
                           0.5, model_prefix="m1d-", batch_sizes=zoo_mnist1d.BATCH_SIZES)}


DEMO_ZOO = "mnist1d"  # what `infaas zoo build` and the demo register by default
PROGRESS_UNITS = 1000  # the whole zoo's progress bar, training and registering together


def build_zoo(settings: Settings, quick: bool = False, names: tuple[str, ...] | None = None, store=None,
              on_progress: Callable[[str, int, int], None] | None = None,
              on_model: Callable[[str], None] | None = None, directory: Path | None = None,
              zoo: str = "digits") -> list:
    """Train, export and register a zoo (see `zoos()`); returns one RegistrationReport per model.
    The exported files go to `directory` when given (kept), else to a temporary directory.
    `on_progress(what, done, total)` follows the whole build on one scale: training, then each
    model's registration."""
    from ..store import Store
    from .register import register_model
    chosen = zoos().get(zoo)
    if chosen is None:
        raise ValueError(f"unknown zoo {zoo!r}; zoos: {', '.join(zoos())}")
    by_name = {z.name: z for z in chosen.models}
    unknown = sorted(set(names or ()) - set(by_name))
    if unknown:
        raise ValueError(f"unknown zoo model(s) {', '.join(unknown)}; the zoo has {', '.join(by_name)}")
    progress = _ZooProgress(on_progress, chosen.training_share, len(names or by_name))
    own = store is None
    store = store or Store(settings).connect()
    reports = []
    try:
        with tempfile.TemporaryDirectory(prefix="infaas-zoo-") as tmp:
            folder = Path(directory or tmp)
            files = chosen.export(folder, quick, names, progress.training)
            for index, (name, path) in enumerate(files.items()):
                if on_model:
                    on_model(name)
                entry = by_name[name]
                reports.append(register_model(model_settings(settings, chosen, entry), chosen.app, chosen.task,
                                              entry.architecture, path, folder / "validation.npz", public=True,
                                              quick=quick, name=chosen.model_prefix + name, store=store,
                                              on_progress=progress.registering(index, name)))
            progress.finish()
    finally:
        if own:
            store.close()
    return reports


def model_settings(settings: Settings, zoo: Zoo, entry) -> Settings:
    """The variants a zoo registers for one model, where the settings leave the choice open (at their
    defaults): the zoo's batch sizes, and the model's optimizers (`entry.optimizers`; a zoo leaves out
    an optimizer all of whose variants of that model another optimizer's variants dominate)."""
    changes: dict[str, tuple] = {}
    if zoo.batch_sizes and _is_default(settings, "variant_batch_sizes"):
        changes["variant_batch_sizes"] = zoo.batch_sizes
    optimizers = getattr(entry, "optimizers", ())
    if optimizers and _is_default(settings, "variant_optimizers"):
        changes["variant_optimizers"] = optimizers
    return settings.replace(**changes) if changes else settings


def _is_default(settings: Settings, name: str) -> bool:
    return getattr(settings, name) == Settings.__dataclass_fields__[name].default


class _ZooProgress:
    """Maps training steps and each model's registration steps onto one bar of PROGRESS_UNITS."""

    def __init__(self, report: Callable[[str, int, int], None] | None, training_share: float, models: int):
        self.report = report or (lambda *a: None)
        self.training_units = int(PROGRESS_UNITS * training_share)
        self.per_model = (PROGRESS_UNITS - self.training_units) / max(models, 1)

    def training(self, what: str, done: int, total: int) -> None:
        self.report(what, int(self.training_units * done / max(total, 1)), PROGRESS_UNITS)

    def registering(self, index: int, name: str) -> Callable[[str, int, int], None]:
        def step(what: str, done: int, total: int) -> None:
            at = self.training_units + self.per_model * (index + done / max(total, 1))
            self.report(f"registering {name}: {what}", int(at), PROGRESS_UNITS)
        return step

    def finish(self) -> None:
        self.report("zoo registered", PROGRESS_UNITS, PROGRESS_UNITS)


def ensure_zoo(settings: Settings, quick: bool, zoo: str | None = None,
               say: Callable[[str], None] = print) -> list:
    """The variants of a zoo's task (default: the demo's mnist1d zoo), registering the zoo if absent."""
    from ..store import Store
    chosen = zoos()[zoo or DEMO_ZOO]
    with Store(settings) as store:
        variants = store.variants_for_task(chosen.task)
    if variants:
        say(f"zoo present: {len(variants)} variants of {chosen.task}")
        return variants
    say(f"registering the {chosen.name} zoo ({'quick' if quick else 'full'} profiling) ...")
    started = time.monotonic()
    build_zoo(settings, quick=quick, zoo=chosen.name)
    with Store(settings) as store:
        variants = store.variants_for_task(chosen.task)
    say(f"zoo registered: {len(variants)} variants in {time.monotonic() - started:.0f} s")
    return variants
