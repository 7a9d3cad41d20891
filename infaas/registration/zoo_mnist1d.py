"""The demo zoo with real trade-offs: classifiers of MNIST-1D (Greydanus 2020), a procedurally
generated 1-D analogue of MNIST (package `mnist1d`, generated offline from a seed), registered as
public models of task `mnist1d-classification` under app `demo`.

MNIST-1D separates model families: its authors report about 32% top-1 for logistic regression,
68% for an MLP and 94% for a CNN. The zoo spans that front, from a linear model at microseconds a
row to a convolutional network trained by gradient descent (jax + optax) at milliseconds a row.

Every model takes `signal` [N, 40] float32 and returns `probabilities` [N, 10] and `label` [N].
Graphs are written with `onnx.helper` from the trained weights, with standard operators only
(Reshape, Conv, Relu, MaxPool, Flatten, MatMul, Add, Softmax, ArgMax), so ONNX Runtime, its int8
quantizer and TVM's Relax frontend all accept them.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..consumers.executors import OPTIMIZERS
from .zoo import OnnxGraph

log = logging.getLogger(__name__)
TASK = "mnist1d-classification"
APP = "demo"
INPUT = "signal"
LENGTH = 40  # samples per signal (mnist1d's final_seq_length)
SAMPLES = 6000  # generated signals: 80% train, 20% held out
SHIFT = 16  # the CNNs train on signals shifted up to this much; the TTA model averages shifts within it
# The variants registered per model: batch sizes 1 (latency), 8 and 32 (throughput) are enough for
# the profile's linear fit and for the scaler's batching choices; each more one is profiled and its
# accuracy measured on the whole validation set, for every optimizer.
BATCH_SIZES = (1, 8, 32)
# Untuned TVM runs these 1-D convolutions 9-20x slower than ONNX Runtime at the same accuracy (its
# variants of the CNNs were all dominated, and measuring them took most of the zoo's build time);
# cnn-small's TVM variants still exercise and profile TVM's convolution path.
WITHOUT_TVM = tuple(o for o in OPTIMIZERS if o != "tvm")
# Step = (what, units done in this model, units in this model): one zoo-wide progress bar.
Step = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ConvNet:
    """Conv1d(kernel) -> ReLU [-> MaxPool 2] per layer, then dense layers (an MLP when there are no
    conv layers); trained by gradient descent (jax autodiff, optax adam, cosine learning rate)."""
    channels: tuple[int, ...]
    pool: tuple[bool, ...]
    hidden: tuple[int, ...] = ()
    kernel: int = 5
    epochs: int = 20
    quick_epochs: int = 2
    batch: int = 128
    learning_rate: float = 3e-3
    max_shift: int = 0  # training augmentation: each signal moved by a random offset up to this (zero-padded)


@dataclass(frozen=True)
class ZooModel:
    name: str
    architecture: str
    build: Callable[[np.ndarray, np.ndarray, bool, int, Step], object]  # (x, y, quick, seed, step) -> ModelProto
    units: Callable[[bool], int]  # progress units its training takes
    optimizers: tuple[str, ...] = ()  # the optimizers its variants are built with (empty: all)


# --- data -----------------------------------------------------------------------------------------
@contextmanager
def _global_random_state():
    """mnist1d seeds the global `random` and `numpy.random` generators; restore them afterwards."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def mnist1d_split(seed: int = 42, samples: int = SAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_valid, y_valid), generated offline by mnist1d from `seed`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed = samples, seed
    with _global_random_state():
        data = make_dataset(args)
    return (data["x"].astype(np.float32), data["y"].astype(np.int64),
            data["x_test"].astype(np.float32), data["y_test"].astype(np.int64))


# --- scikit-learn's logistic regression --------------------------------------------------------------------------
def _logistic(x, y, quick: bool, seed: int, step: Step):
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(max_iter=100 if quick else 1000, random_state=seed).fit(x, y)
    graph = OnnxGraph(INPUT, LENGTH, scale=None)
    graph.dense(0, clf.coef_.T, clf.intercept_, relu=False)
    step("logreg", 1, 1)
    return graph.model("logreg")


# --- convolutional networks (jax + optax) ---------------------------------------------------------
def _init(net: ConvNet, key) -> list:
    import jax
    import jax.numpy as jnp
    params, fan_in, length = [], 1, LENGTH
    for channels, pool in zip(net.channels, net.pool, strict=True):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (channels, fan_in, net.kernel)) * np.sqrt(2 / (fan_in * net.kernel)),
                       jnp.zeros(channels)))
        fan_in, length = channels, length // 2 if pool else length
    width = fan_in * length
    for size in (*net.hidden, 10):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (width, size)) * np.sqrt(2 / width), jnp.zeros(size)))
        width = size
    return params


def _forward(net: ConvNet, params: list, x):
    import jax
    import jax.numpy as jnp
    h = x[:, None, :]
    pad = net.kernel // 2
    for (w, b), pool in zip(params, net.pool, strict=False):
        h = jax.lax.conv_general_dilated(h, w, (1,), [(pad, pad)], dimension_numbers=("NCH", "OIH", "NCH"))
        h = jax.nn.relu(h + b[None, :, None])
        if pool:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2), (1, 1, 2), "VALID")
    h = h.reshape(h.shape[0], -1)
    dense = params[len(net.channels):]
    for i, (w, b) in enumerate(dense):
        h = h @ w + b
        if i < len(dense) - 1:
            h = jax.nn.relu(h)
    return h


def _train(net: ConvNet, x: np.ndarray, y: np.ndarray, quick: bool, seed: int, step: Step, name: str) -> list:
    import jax
    import optax
    epochs = net.quick_epochs if quick else net.epochs
    steps_per_epoch = len(x) // net.batch
    schedule = optax.cosine_decay_schedule(net.learning_rate, epochs * steps_per_epoch)
    optimizer = optax.adam(schedule)
    params = _init(net, jax.random.PRNGKey(seed))
    state = optimizer.init(params)

    def loss(params, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(_forward(net, params, xb), yb).mean()

    @jax.jit
    def update(params, state, xb, yb):
        grads = jax.grad(loss)(params, xb, yb)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    order = np.random.default_rng(seed)
    for epoch in range(epochs):
        batches = order.permutation(len(x))[:steps_per_epoch * net.batch].reshape(steps_per_epoch, net.batch)
        for rows in batches:
            params, state = update(params, state, _shifted(x[rows], net.max_shift, order), y[rows])
        step(f"{name}: epoch {epoch + 1}/{epochs}", epoch + 1, epochs)
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in params]


def _shifted(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each row moved by a random offset in [-max_shift, max_shift], zero-padded (as the TTA graph does)."""
    if max_shift == 0:
        return x
    padded = np.pad(x, ((0, 0), (max_shift, max_shift)))
    starts = max_shift - rng.integers(-max_shift, max_shift + 1, len(x))
    return padded[np.arange(len(x))[:, None], starts[:, None] + np.arange(x.shape[1])]


def _convnet(name: str, net: ConvNet, shifts: tuple[int, ...] = ()):
    """The trained network as ONNX. With `shifts`, test-time augmentation: the logits averaged over
    copies of the signal shifted by each offset (zero-padded), which the translations in mnist1d
    make a real accuracy gain, bought with compute."""
    def build(x, y, quick: bool, seed: int, step: Step):
        params = _train(net, x, y, quick, seed, step, name)
        graph = OnnxGraph(INPUT, LENGTH, scale=None)
        if shifts:
            _shifted_copies(graph, shifts)
        _network(graph, net, params)
        if shifts:  # [copies * N, 10] -> mean over the copies -> [N, 10]
            graph.op("Reshape", graph.const("copies_shape", np.array([len(shifts), -1, 10], np.int64)))
            graph.op("ReduceMean", axes=[0], keepdims=0)
        return graph.model(name)
    return build


def _network(graph: OnnxGraph, net: ConvNet, params: list) -> None:
    """[N, LENGTH] -> logits [N, 10]."""
    if net.channels:
        graph.op("Reshape", graph.const("signal_shape", np.array([-1, 1, LENGTH], np.int64)))
    pad = net.kernel // 2
    for i, ((w, b), pool) in enumerate(zip(params, net.pool, strict=False)):
        graph.op("Conv", graph.const(f"k{i}", w), graph.const(f"kb{i}", b), pads=[pad, pad])
        graph.op("Relu")
        if pool:
            graph.op("MaxPool", kernel_shape=[2], strides=[2])
    if net.channels:
        graph.op("Flatten", axis=1)
    dense = params[len(net.channels):]
    for i, (w, b) in enumerate(dense):
        graph.dense(i, w, b, relu=i < len(dense) - 1)


def _shifted_copies(graph: OnnxGraph, shifts: tuple[int, ...]) -> None:
    """[N, L] -> [len(shifts) * N, L]: copy k is the signal moved by shifts[k] samples."""
    from onnx import helper
    margin = max(abs(s) for s in shifts)
    graph.op("Pad", graph.const("tta_pads", np.array([0, margin, 0, margin], np.int64)))
    padded, copies = graph.last, []
    for k, shift in enumerate(shifts):
        start = margin - shift
        out = f"shift{k}"
        graph.nodes.append(helper.make_node(
            "Slice", [padded, graph.const(f"s{k}_start", np.array([start], np.int64)),
                      graph.const(f"s{k}_end", np.array([start + LENGTH], np.int64)),
                      graph.const(f"s{k}_axis", np.array([1], np.int64))], [out]))
        copies.append(out)
    graph.nodes.append(helper.make_node("Concat", copies, ["copies"], axis=0))
    graph.last = "copies"


def _units(net: ConvNet | None) -> Callable[[bool], int]:
    return (lambda quick: 1) if net is None else (lambda quick: net.quick_epochs if quick else net.epochs)


def _net_model(name: str, architecture: str, net: ConvNet, shifts: tuple[int, ...] = (),
               optimizers: tuple[str, ...] = ()) -> ZooModel:
    return ZooModel(name, architecture, _convnet(name, net, shifts), _units(net), optimizers)


CNN = ConvNet((32, 64, 64), (False, True, True), max_shift=SHIFT)
CNN_LARGE = ConvNet((64, 128, 128), (False, True, True), max_shift=SHIFT)  # 4x the cnn's multiply-adds
TTA_SHIFTS = tuple(range(-SHIFT, SHIFT + 1))  # every shift the network trained on: 33 copies
# Its int8 variants ran 4x slower than fp32 at the same top-1 (ConvInteger, dynamic quantization).
ORT_FP32 = tuple(o for o in WITHOUT_TVM if o != "ort-int8")
# Ordered fastest to most accurate; each step buys accuracy with compute (see the zoo table in README).
ZOO = (
    ZooModel("logreg", "logistic-regression", _logistic, _units(None)),
    _net_model("mlp", "mlp-256x256", ConvNet((), (), hidden=(256, 256), epochs=30)),
    _net_model("cnn-small", "cnn1d-16x16x16", ConvNet((16, 16, 16), (True, True, True))),
    _net_model("cnn", "cnn1d-32x64x64", CNN, optimizers=WITHOUT_TVM),
    _net_model("cnn-large-tta", f"cnn1d-64x128x128-tta{len(TTA_SHIFTS)}", CNN_LARGE, shifts=TTA_SHIFTS,
               optimizers=ORT_FP32),
)


DATA_UNITS = 5  # progress units generating the data takes, against one per training epoch


def export_zoo(directory: Path, quick: bool = False, names: tuple[str, ...] | None = None,
               step: Step | None = None, seed: int = 0, samples: int | None = None) -> dict[str, Path]:
    """Generate `samples` signals (default SAMPLES), train the zoo and write `<name>.onnx` files and `validation.npz`
    (the held-out split) into `directory`. The same seed gives the same bytes."""
    import onnx
    step = step or (lambda *a: None)
    chosen = [entry for entry in ZOO if not names or entry.name in names]
    total = DATA_UNITS + sum(entry.units(quick) for entry in chosen)
    step("generating mnist1d", 0, total)
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_valid, y_valid = mnist1d_split(samples=samples or SAMPLES)
    np.savez(directory / "validation.npz", inputs=x_valid, labels=y_valid)
    done = DATA_UNITS
    files = {}
    for entry in chosen:
        step(f"training {entry.name}", done, total)
        started = time.perf_counter()

        def within(what: str, units: int, of: int, base: int = done) -> None:
            step(f"training {what}", base + units, total)

        model = entry.build(x_train, y_train, quick, seed, within)
        done += entry.units(quick)
        files[entry.name] = directory / f"{entry.name}.onnx"
        onnx.save(model, str(files[entry.name]))
        log.info("trained %s in %.1f s", entry.name, time.perf_counter() - started)
    step("trained", total, total)
    return files
