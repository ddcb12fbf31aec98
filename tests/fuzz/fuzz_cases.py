"""Fuzz cases: every family by name, a case regenerated deterministically from (family, seed), and the
committed corpus of cases that once failed (`corpus/<case>.onnx`, external data beside it as
`<case>.onnx.data`).

Plain seeded `random.Random` mutation rather than hypothesis: a case is a whole file run through the CLI in
a separate process (about 0.3 s), so hypothesis' shrinking would re-run hundreds of them per failure, its
example database would make CI runs depend on earlier ones, and its health checks fight a per-case budget.
A (family, seed) pair names each case exactly instead, in the test and in `tools/fuzz.py` alike, and a
failure is kept as the file itself."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fuzz_bytes import BYTE_FAMILIES
from fuzz_graph import GRAPH_MUTATIONS
from fuzz_seeds import SEEDS, seed_model
from fuzz_tensors import TENSOR_MUTATIONS, to_external

__all__ = ["CORPUS", "Case", "FAMILIES", "corpus_cases", "generate", "save_case", "sequence"]

CORPUS = Path(__file__).resolve().parent / "corpus"
MODEL = "in.onnx"


@dataclass(frozen=True)
class Case:
    name: str  # "<family>-<seed model>-<seed>", also the corpus file's stem
    files: dict[str, bytes]  # MODEL and its sidecars ("in.onnx.data"), as written into the case's input folder


def _structural(mutation: Callable) -> Callable[[random.Random], tuple[str, dict[str, bytes]]]:
    def family(rng: random.Random) -> tuple[str, dict[str, bytes]]:
        seed = rng.choice(sorted(SEEDS))
        model = seed_model(seed)
        extra = mutation(rng, model) or {}
        return seed, {MODEL: model.SerializeToString(), **extra}

    family.__doc__ = mutation.__doc__
    return family


def combo(rng: random.Random) -> tuple[str, dict[str, bytes]]:
    """Two or three structural mutations on one seed; a third of these then move the weights external."""
    seed = rng.choice(sorted(SEEDS))
    model = seed_model(seed)
    mutations = {**GRAPH_MUTATIONS, **TENSOR_MUTATIONS}
    extra: dict[str, bytes] = {}
    for name in rng.sample(sorted(mutations), rng.randint(2, 3)):
        try:
            extra.update(mutations[name](rng, model) or {})
        except Exception:  # noqa: BLE001
            pass  # an earlier mutation removed what this one needs (no node of that op, no initializers)
    if not extra and rng.random() < 0.33:
        try:
            extra = {"in.onnx.data": to_external(model)}
        except Exception:  # a garbled tensor numpy cannot decode stays inline
            pass
    return seed, {MODEL: model.SerializeToString(), **extra}


FAMILIES: dict[str, Callable[[random.Random], tuple[str, dict[str, bytes]]]] = {
    **BYTE_FAMILIES,
    **{name: _structural(fn) for name, fn in {**GRAPH_MUTATIONS, **TENSOR_MUTATIONS}.items()},
    "combo": combo,
}


def generate(family: str, seed: int) -> Case:
    """Case SEED of FAMILY: the same bytes on every run and machine (random.Random seeded with a string)."""
    rng = random.Random(f"{family}:{seed}")
    label, files = FAMILIES[family](rng)
    return Case(f"{family}-{label}-{seed}", files)


def sequence(start: int = 0, families: list[str] | None = None) -> Iterator[Case]:
    """Cases START, START+1, ...: the families in turn (so any run of len(families) cases covers them all)."""
    names = families or sorted(FAMILIES)
    index = start
    while True:
        yield generate(names[index % len(names)], index // len(names))
        index += 1


def save_case(case: Case, folder: Path = CORPUS) -> Path:
    """Write CASE into FOLDER as <name>.onnx (+ <name>.onnx.data ...); the model's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (folder / (case.name + name[len("in"):])).write_bytes(data)
    return folder / f"{case.name}.onnx"


def corpus_cases(folder: Path = CORPUS) -> list[Case]:
    """Every case committed in FOLDER, sidecars mapped back to the names the model refers to."""
    cases = []
    for model in sorted(folder.glob("*.onnx")):
        files = {MODEL: model.read_bytes()}
        for sidecar in folder.glob(f"{model.name}.*"):
            files[MODEL + sidecar.name[len(model.name):]] = sidecar.read_bytes()
        cases.append(Case(model.stem, files))
    return cases
