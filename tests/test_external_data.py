"""Models with external data: loaded without their weights (memory-mapped on use), pruned, written as OUT +
OUT.data by streaming, and verified from the written files (`graph.external`, `graph.io`)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from onnxdepth import api
from onnxdepth.config import PruneConfig
from onnxdepth.errors import ModelLoadError, OutputWriteError
from onnxdepth.graph.external import ExternalValues, external_tensors, folder_of
from onnxdepth.graph.io import load_model, save_model_atomic
from onnxdepth.prune.session import PruneSession
from onnxdepth.runtime import open_session

import graphs


@pytest.fixture
def external(tmp_path):
    """build_residual saved with every initializer in `in.onnx.data`."""
    folder = tmp_path / "src"
    folder.mkdir()
    path = folder / "in.onnx"
    onnx.save_model(graphs.build_residual(), str(path), save_as_external_data=True, location="in.onnx.data",
                    size_threshold=0)
    return path


def _run(path, x):
    return open_session(str(path)).run(None, {"x": x})


def test_load_keeps_the_weights_in_their_file(external):
    model = load_model(external)
    assert external_tensors(model) and not any(t.raw_data for t in external_tensors(model))
    assert folder_of(model) == str(external.parent.resolve())
    session = PruneSession(model)
    assert all(isinstance(c._values, ExternalValues) for c in session.graph.tensors().values()
               if hasattr(c, "_values") and hasattr(c._values, "tensor") and c._values.tensor.external_data)
    x = np.random.default_rng(0).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    # ORT opens the light proto, reading the weights from the recorded folder.
    np.testing.assert_array_equal(open_session(model).run(None, {"x": x})[0], _run(external, x)[0])


@pytest.mark.parametrize("importance", ["magnitude", "auto"])
def test_prune_writes_out_and_its_data_beside_it(cli, external, tmp_path, importance):
    before = {p.name: p.read_bytes() for p in external.parent.iterdir()}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.onnx"
    code, stdout, err = cli("prune", external, out, "--ratio", "0.3", "--importance", importance, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["reduction"] >= 0.3
    assert sorted(os.listdir(out_dir)) == ["pruned.onnx", "pruned.onnx.data", "pruned.plan.json"]  # no temporaries
    assert {p.name: p.read_bytes() for p in external.parent.iterdir()} == before  # the input is untouched
    written = onnx.load(str(out), load_external_data=False)
    assert external_tensors(written)
    assert {e.value for t in external_tensors(written) for e in t.external_data if e.key == "location"} == \
        {"pruned.onnx.data"}
    assert not any(p.key == "onnxdepth.external_dir" for p in written.metadata_props)  # no absolute paths leak
    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(1).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    assert _run(out, x)[0].shape == _run(external, x)[0].shape


def test_ratio_zero_is_bit_identical(external, tmp_path):
    out = tmp_path / "zero.onnx"
    api.prune_file(external, out, PruneConfig(0.0))
    x = np.random.default_rng(2).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x)[0], _run(external, x)[0])


def test_same_pruned_weights_as_the_model_loaded_in_memory(external, tmp_path):
    config = PruneConfig(0.3, importance="magnitude", compensate="none")
    api.prune_file(external, tmp_path / "lazy.onnx", config)
    in_memory = tmp_path / "plain.onnx"
    onnx.save_model(graphs.build_residual(), str(in_memory))
    api.prune_file(in_memory, tmp_path / "plain_out.onnx", config)
    lazy = {t.name: onnx.numpy_helper.to_array(t, base_dir=str(tmp_path))
            for t in onnx.load(str(tmp_path / "lazy.onnx"), load_external_data=False).graph.initializer}
    plain = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "plain_out.onnx")).graph.initializer}
    assert lazy.keys() == plain.keys()
    for name in plain:
        np.testing.assert_array_equal(lazy[name], plain[name])


def test_a_failed_check_leaves_nothing(external, tmp_path):
    model = load_model(external)

    def refuse(path):
        raise OutputWriteError("refused")

    with pytest.raises(OutputWriteError):
        save_model_atomic(model, tmp_path / "x.onnx", check=refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("damage", ["missing", "truncated", "escaping"])
def test_broken_external_data_is_a_clean_error(external, damage):
    data = external.parent / "in.onnx.data"
    if damage == "missing":
        data.unlink()
        match = "external data file missing"
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
        match = "runs past the end"
    else:
        model = onnx.load(str(external), load_external_data=False)
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
        onnx.save_model(model, str(external))
        match = "leaves the model folder"
    with pytest.raises(ModelLoadError, match=match):
        load_model(external)


def test_bench_counts_the_external_data_in_the_file_size(external):
    from onnxdepth.bench import bench_models

    row = bench_models([str(external)], runs=1, warmup=0)[0]
    total = sum(p.stat().st_size for p in external.parent.iterdir())
    assert row.file_mb == pytest.approx(total / 1e6)


def test_a_killed_runs_temporaries_are_cleaned_by_the_next_run(external, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID that no longer runs
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stale = [out_dir / f".pruned.onnx.{dead.pid}.abc.tmp", out_dir / f".pruned.plan.json.{dead.pid}.x.tmp"]
    stale[0].mkdir()
    (stale[0] / "pruned.onnx.data").write_bytes(b"half")
    stale[1].write_text("{")
    alive = out_dir / f".pruned.onnx.{os.getpid()}.def.tmp"  # a running process's: left alone
    alive.write_text("busy")
    api.prune_file(external, out_dir / "pruned.onnx", PruneConfig(0.3, importance="magnitude"))
    assert not any(p.exists() for p in stale) and alive.exists()
    assert {"pruned.onnx", "pruned.onnx.data", "pruned.plan.json"} <= set(os.listdir(out_dir))


def test_overwriting_out_alternates_its_data_file_and_removes_the_old_one(external, tmp_path):
    """A second write over OUT puts its data under the name the OUT on disk does not use, then removes the
    old data: one data file, the one OUT refers to."""
    out = tmp_path / "out.onnx"
    names = []
    for _ in range(3):
        save_model_atomic(load_model(external), out)
        written = onnx.load(str(out), load_external_data=False)
        names.append({e.value for t in external_tensors(written) for e in t.external_data if e.key == "location"})
        assert sorted(os.listdir(tmp_path)) == sorted(["out.onnx", *names[-1], "src"])
    assert names == [{"out.onnx.data"}, {"out.onnx.1.data"}, {"out.onnx.data"}]
    x = np.random.default_rng(2).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x)[0], _run(external, x)[0])


def test_a_kill_between_the_two_renames_leaves_the_old_pair_whole(external, tmp_path, monkeypatch):
    """The process dying right after the new data file is renamed into place (before OUT is) must leave the
    old OUT with its own data; the orphan new data file goes at the next write."""
    from onnxdepth.graph import io as graph_io

    out = tmp_path / "out.onnx"
    old = graphs.build_residual()
    first = old.graph.initializer[0]
    first.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(first) * 0.5, first.name))
    onnx.save_model(old, str(out), save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    x = np.random.default_rng(3).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    before = _run(out, x)[0]
    assert not np.array_equal(before, _run(external, x)[0])
    real_replace = os.replace

    class Killed(BaseException):
        """Stands for SIGKILL: nothing after the raise runs, no cleanup of the renamed file."""

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(out):
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(graph_io.os, "replace", replace)
    with pytest.raises(Killed):
        save_model_atomic(load_model(external), out)
    monkeypatch.setattr(graph_io.os, "replace", real_replace)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.1.data", "out.onnx.data", "src"]
    np.testing.assert_array_equal(_run(out, x)[0], before)  # the old pair, untouched
    save_model_atomic(load_model(external), out)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.1.data", "src"]  # orphan replaced, old data gone
    np.testing.assert_array_equal(_run(out, x)[0], _run(external, x)[0])
