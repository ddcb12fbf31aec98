"""`onnxdepth report`: self-contained HTML (+ Markdown and PNGs beside it) of sweeps, bench JSON and pruned
models; the Figure 4.3 grid of a pruned tiny Llama; a headless-Chromium screenshot of the page."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import graphs
import onnx
import pytest

from onnxdepth.config import PruneConfig
from onnxdepth import api
from onnxdepth.bench import bench_models
from onnxdepth.unitgrid import KINDS, unit_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page and "file:" not in page
    assert not re.search(r"<(link|script|iframe|object|embed)\b", page, re.I)
    assert "url(" not in page and "@import" not in page  # nothing loaded from CSS either
    sources = re.findall(r"""src\s*=\s*["']?([^"' >]+)""", page, re.I)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:3]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A small CNN sweep (latency only), run once for the module."""
    from onnxdepth.sweep import SweepConfig, run_sweep

    root = tmp_path_factory.mktemp("report_sweep")
    model = root / "residual.onnx"
    onnx.save(graphs.build_residual(), str(model))
    run_sweep(SweepConfig(model=str(model), ratios=[0.0, 0.2, 0.4, 0.6], bench_runs=2), root / "sweep")
    return root / "sweep"


@pytest.fixture(scope="module")
def pruned_llama(tmp_path_factory):
    """The tiny Llama pruned to 0.5 at fine granularity (magnitude): a whole layer and single units go."""
    for module in ("torch", "optimum.exporters.onnx", "tokenizers"):
        pytest.importorskip(module)
    from tiny_lm import tiny_llama_lm

    model, _ = tiny_llama_lm(tmp_path_factory)
    out = tmp_path_factory.mktemp("report_llama") / "llama-fine-0.5.onnx"
    api.prune_file(model, out, PruneConfig(0.5, granularity="fine", importance="magnitude"))
    return out


@pytest.fixture
def bench_json(tmp_path):
    model = graphs.build_residual()
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    onnx.save(model, str(paths[0]))
    onnx.save(api.prune_model(model, PruneConfig(0.3)).model, str(paths[1]))
    rows = bench_models([str(p) for p in paths], runs=2, warmup=0)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([r.to_json() for r in rows]))
    return path


# -- the grid of Figure 4.3 ----------------------------------------------------------------------------
def test_unit_grid_from_plan_ids():
    plan = {"layers": 4, "steps": [
        {"unit": "layer1.mlp_gate"}, {"unit": "layer0.attention"},
        {"unit": "layer2.mlp", "members": ["layer2.mlp_gate", "layer2.mlp_up", "layer2.mlp_down"]},
        {"unit": "layer3.block"}, {"unit": "layer0.up"}]}
    grid = unit_grid(plan)
    assert grid.layers == 4 and grid.kinds == KINDS
    assert grid.order[(1, "gate")] == 1 and grid.order[(0, "attention")] == 2 and grid.order[(0, "up")] == 5
    assert [grid.pruned(2, k) for k in KINDS] == [False, True, True, True]
    assert grid.layer_gone(3) and not grid.layer_gone(2) and not grid.pruned(1, "up")
    assert unit_grid({"steps": [{"unit": "layer5.mlp_down"}]}).layers == 6  # no count: up to the last pruned
    assert unit_grid({"steps": [{"unit": "/model.0/conv/Conv"}]}) is None  # CNN plans have no grid
    assert unit_grid({"layers": 0, "steps": []}) is None


def test_report_of_pruned_llama_has_the_grid(pruned_llama, tmp_path, cli):
    plan = json.loads(api.plan_path_for(pruned_llama).read_text())
    out = tmp_path / "out" / "llama.html"  # the directory is created
    code, stdout, stderr = cli("report", pruned_llama, "-o", out)
    assert code == 0, stderr
    page = out.read_text()
    _assert_self_contained(page)
    assert "Figure 4.3" in page and '<table class="grid">' in page

    grid = unit_grid(plan)
    assert grid.layers == 3
    pruned_cells = re.findall(r'<td class="pruned[^"]*">(\d+)</td>', page)
    assert len(pruned_cells) == len(grid.order) >= len(plan["steps"])
    assert sorted(int(c) for c in pruned_cells) == sorted(grid.order.values())
    # the cells of a whole pruned layer (layer 1 here) are marked "gone" (dark)
    assert grid.layer_gone(1)
    assert page.count('class="pruned gone"') == 4 * sum(grid.layer_gone(layer) for layer in range(grid.layers))
    for step in plan["steps"]:
        assert f"<td>{step['unit']}</td>" in page

    markdown = (tmp_path / "out" / "llama.md").read_text()
    (image,) = re.findall(r"\]\(([^)]+\.png)\)", markdown)
    assert (tmp_path / "out" / image).read_bytes().startswith(PNG_MAGIC)
    assert "| attention |" in markdown and "**" in markdown


def test_report_of_sweeps_bench_and_plan_json(sweep_dir, bench_json, pruned_llama, tmp_path, cli):
    out = tmp_path / "all.html"
    plan_json = api.plan_path_for(pruned_llama)
    cnn_model = sweep_dir / "models" / "full-0.2000.onnx"
    code, _, stderr = cli("report", sweep_dir, sweep_dir, bench_json, plan_json, cnn_model, "-o", out, "--title", "T")
    assert code == 0, stderr
    page = out.read_text()
    _assert_self_contained(page)
    assert "Pruned model: full-0.2000.onnx" in page and "Algorithm 9" in page
    assert page.count('<table class="grid">') == 1  # the Llama's; a CNN plan has no layer grid
    assert "<h1>T</h1>" in page and "Benchmark: bench.json" in page and "a.onnx" in page
    assert "latency per batch (ms)" in page and "residual 0.20 full" in page
    assert f"Pruned model: {plan_json.name}" in page and '<table class="grid">' in page
    markdown = (tmp_path / "all.md").read_text()
    images = re.findall(r"\]\(([^)]+\.png)\)", markdown)
    assert images and len(images) == len(set(images)) == page.count("<img ")
    for name in images:
        assert name.startswith("all-") and (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_report_errors(tmp_path, bench_json, cli):
    plain = tmp_path / "plain.onnx"
    onnx.save(graphs.build_mlp(), str(plain))
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": 1}')
    for inputs, message in [([tmp_path / "missing"], "no such file"), ([plain], "no onnxdepth plan"),
                            ([bad], "not a bench JSON"), ([tmp_path], "not a sweep directory"),
                            ([tmp_path / "bench.json", tmp_path / "x.txt"], "no such file")]:
        code, _, stderr = cli("report", *inputs, "-o", tmp_path / "r.html")
        assert code == 1 and message in stderr and "Traceback" not in stderr, (inputs, stderr)
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.md").exists()


# -- what a browser shows ------------------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (chromium, chromium-browser or google-chrome); "
                                              "install it with apt-get install chromium")
def test_report_screenshot_in_chromium(sweep_dir, tmp_path):
    import numpy as np
    from PIL import Image

    page = sweep_dir / "report.html"
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,2000", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {run.returncode}): {run.stderr[-2000:]}"
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2000, 1200)
    ink = (pixels < 200).any(axis=2)
    assert ink.mean() > 0.01  # not a blank page
    # The first plot (latency vs reduction) sits under the title and notes: coloured lines on white, so
    # the region varies, and it has saturated pixels that neither text nor tables (grey) produce.
    region = pixels[100:900, :1000]
    assert region.std() > 20
    saturated = (region.max(axis=2) - region.min(axis=2)) > 80
    assert saturated.sum() > 500
