"""`importance.shared_weights`: the large inline weights of a chain's cut-outs are written once to a scratch
file that every session maps; outputs are unchanged and the file goes with the object."""

from __future__ import annotations

import os

import numpy as np

from onnxdepth.importance.shared_weights import SharedWeights
from onnxdepth.runtime import open_session

import graphs


def test_sessions_read_the_shared_file_and_compute_the_same(tmp_path):
    model = graphs.build_residual()
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    shared = SharedWeights(model, min_elements=int(np.prod(big.dims)))
    assert big.name in shared.entries and os.path.isdir(shared.folder)
    assert all(int(np.prod(t.dims)) >= int(np.prod(big.dims)) for t in model.graph.initializer if t.name in shared.entries)
    x = np.random.default_rng(0).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    expected = open_session(model).run(None, {"x": x})[0]
    copy = type(model)()
    copy.CopyFrom(model)
    session = shared.session(copy, None)
    stripped = next(t for t in copy.graph.initializer if t.name == big.name)
    assert not stripped.raw_data and stripped.external_data  # the session's copy refers to the file
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)
    folder = shared.folder
    del session
    shared.close()
    assert not os.path.exists(folder)


def test_nothing_is_written_for_small_or_external_weights():
    shared = SharedWeights(graphs.build_residual())  # every weight under the 4M-element threshold
    assert shared.folder is None and not shared.entries
    shared.close()
