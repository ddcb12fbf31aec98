"""--workers / --ray-address: angular scores of a tiny Llama computed as Ray layer jobs equal the
single-process ones (a local 2-worker runtime)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("torch")
ray = pytest.importorskip("ray")

from onnxdepth import api  # noqa: E402
from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth.distributed import ray_pool  # noqa: E402
from onnxdepth.errors import InvalidArgumentError  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.graph.io import load_model  # noqa: E402
from onnxdepth.importance.angular import angular_scores  # noqa: E402
from onnxdepth.importance.layer_jobs import pooled_angular_scores  # noqa: E402
from onnxdepth.prune.session import PruneSession  # noqa: E402

from tiny_hf import save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    path = export_hf(save_tiny_llama(root / "hf", layers=3, norm_noise=0.1), root / "onnx", task="text-generation")
    tokens = np.random.default_rng(0).integers(0, 128, (4, 16)).astype(np.int64)
    np.savez(root / "calib.npz", input_ids=tokens)
    return path, tokens, root / "calib.npz"


@pytest.fixture(scope="module")
def pool():
    with ray_pool(2, None) as running:
        yield running


@pytest.mark.parametrize("metric,granularity", [("angular", "fine"), ("angular", "sublayer"),
                                                ("cross_entropy", "fine"), ("cross_entropy", "block")])
def test_ray_layer_jobs_equal_the_single_process_scores(llama, pool, metric, granularity):
    from onnxdepth.importance.cross_entropy import cross_entropy_scores
    from onnxdepth.importance.chain_stages import pipelined_cross_entropy_scores

    single, pooled = {"angular": (angular_scores, pooled_angular_scores),
                      "cross_entropy": (cross_entropy_scores, pipelined_cross_entropy_scores)}[metric]
    path, tokens, _ = llama
    model = load_model(path)
    session = PruneSession(model, granularity=granularity)
    local = single(model, session, tokens, progress=False)
    remote = pooled(model, session, tokens, pool)
    assert remote.keys() == local.keys() and len(local) >= 3
    assert remote == local  # bit for bit: the same cut-out layers, the same runs (and reference distribution)


def test_score_with_workers_writes_the_same_table(llama, pool, cli, tmp_path):
    path, _, calib = llama
    common = ["--importance", "angular", "--calib", calib, "--calib-sequences", "4", "--calib-length", "16"]
    code, _, err = cli("score", path, *common, "-o", tmp_path / "one.csv")
    assert code == 0, err
    code, _, err = cli("score", path, *common, "--workers", "2", "-o", tmp_path / "ray.csv")
    assert code == 0, err
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "one.csv").read_text()


def test_workers_are_refused_where_ray_does_not_score(llama):
    path, _, calib = llama
    config = PruneConfig(0.2, importance="magnitude", workers=2, calibration=Calibration(str(calib), 4, 16))
    with pytest.raises(InvalidArgumentError, match="not yet supported"):
        api.prune_file(path, path.parent / "out.onnx", config)


def test_workers_must_be_positive():
    with pytest.raises(InvalidArgumentError, match="at least 1"):
        PruneConfig(0.2, workers=0)


def test_ray_fitted_run_table_equals_the_single_process_one(llama, pool):
    """The least-squares compensated damage of every block run (the default LLM scores), one job per first layer."""
    from onnxdepth.compensate import stream_writers
    from onnxdepth.compensate.runs import fitted_run_table
    from onnxdepth.importance.layer_jobs import pooled_fitted_run_table

    path, tokens, _ = llama
    model = load_model(path)
    writers = stream_writers(PruneSession(model, granularity="block"))
    held_out = np.random.default_rng(1).integers(0, 128, (4, 16)).astype(np.int64)
    local = fitted_run_table(model, writers, tokens, held_out)
    remote = pooled_fitted_run_table(model, writers, tokens, held_out, pool)
    assert len(local) == 3 and any(v > 0 for row in local for v in row[1:])
    assert remote == local


class _InlinePool:
    """The `RayPool` calls `pipelined_cross_entropy_scores` makes, run in this process (refs are the values):
    any number of stages without a Ray runtime."""

    class _Actor:
        class _Method:
            def __init__(self, bound):
                self.remote = bound

        def __init__(self, instance):
            self.score, self.forward = self._Method(instance.score), self._Method(instance.forward)
            self.close = self._Method(instance.close)

    def __init__(self, cpus):
        self._cpus = cpus

    def cpus(self):
        return self._cpus

    def put(self, value):
        return value

    def actor(self, cls, *args):
        return self._Actor(cls(*args))

    def get(self, refs):
        return list(refs)


@pytest.mark.parametrize("stages", [1, 3, 7])
def test_cross_entropy_pipeline_equals_the_single_process_scores_at_any_stage_count(llama, stages):
    """One stage holds the whole chain, three one layer each; more CPUs than layers still gives 3 stages."""
    from onnxdepth.importance.chain_stages import pipelined_cross_entropy_scores, stage_ranges
    from onnxdepth.importance.cross_entropy import cross_entropy_scores

    path, tokens, _ = llama
    model = load_model(path)
    session = PruneSession(model, granularity="fine")
    local = cross_entropy_scores(model, session, tokens, progress=False)
    assert pipelined_cross_entropy_scores(model, session, tokens, _InlinePool(stages)) == local
    assert len(stage_ranges(3, stages)) == min(stages, 3)


def test_stage_ranges_cover_every_layer_once_in_near_equal_runs():
    from onnxdepth.importance.chain_stages import stage_ranges

    for layers in (1, 2, 5, 30, 80):
        for stages in (1, 2, 3, 8, 100):
            ranges = stage_ranges(layers, stages)
            assert [i for first, last in ranges for i in range(first, last)] == list(range(layers))
            lengths = [last - first for first, last in ranges]
            assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
