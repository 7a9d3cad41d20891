"""`infaas bench pipeline` compares the pipeline with the raw executor on models that cost something
(>= 2 ms a row), and keeps the tiny model, where only the pipeline's own overhead shows, apart."""

from infaas.benchmarks import pick_variants
from infaas.catalog import Variant


def variant(model: str, ms_per_row: float, batch: int, optimizer: str = "ort-fp32", threads: int = 1) -> Variant:
    vid = f"{model}:{optimizer}:cpu-{threads}t:b{batch}"
    return Variant("t", vid, model, 1, "demo", True, optimizer, "cpu", threads, batch, "a", 1, 0.9, 1.0,
                   ms_per_row * batch, ms_per_row * batch, ms_per_row, 0.0, 1.0, 1.0, 0.1)


def zoo(costs: dict[str, float]) -> dict[str, Variant]:
    made = [variant(m, ms, b) for m, ms in costs.items() for b in (1, 8)]
    made += [variant(m, ms / 4, 1, optimizer="tvm") for m, ms in costs.items()]  # not ORT fp32: never picked
    return {v.variant_id: v for v in made}


def test_rows_are_the_costly_models_and_a_separate_tiny_one():
    rows = pick_variants(zoo({"logreg": 0.01, "cnn": 0.5, "cnn-large": 2.5, "cnn-tta": 9.0}), quick=False)
    assert rows[0] == ("tiny model (pipeline overhead)", variant("logreg", 0.01, 1))
    costly = [(row, v.variant_id) for row, v in rows[1:]]
    assert costly == [("models >= 2 ms a row", f"{m}:ort-fp32:cpu-1t:b{b}") for m in ("cnn-large", "cnn-tta")
                      for b in (1, 8)]
    assert [v.batch_size for _, v in pick_variants(zoo({"a": 0.01, "b": 3.0}), quick=True)] == [1, 1]


def test_without_a_costly_model_the_slowest_is_measured_and_says_so():
    rows = pick_variants(zoo({"logreg": 0.01, "cnn": 0.5}), quick=True)
    assert [(row, v.model) for row, v in rows] == [("tiny model (pipeline overhead)", "logreg"),
                                                   ("slowest model (none reaches 2 ms a row)", "cnn")]


def test_activation_is_measured_on_the_fastest_loading_variants_not_hosted():
    from dataclasses import replace

    from infaas.benchmarks import cold_variants
    made = zoo({"logreg": 0.01, "cnn": 0.5, "mlp": 0.1})
    made = {vid: replace(v, load_ms=float(i)) for i, (vid, v) in enumerate(sorted(made.items()))}
    hosted = [made["cnn:ort-fp32:cpu-1t:b1"]]
    picked = cold_variants(made, hosted, 2)
    assert hosted[0] not in picked and len(picked) == 2
    spare = [v.load_ms for v in made.values() if v not in hosted and v.optimizer == "ort-fp32"]
    assert [v.load_ms for v in picked] == sorted(spare)[:2]
    assert all(v.optimizer == "ort-fp32" for v in picked)  # TVM's first load imports TVM: not what is measured
