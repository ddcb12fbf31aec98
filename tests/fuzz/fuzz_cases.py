"""Fuzz cases: every family by name, a case regenerated deterministically from (family, seed), and the
corpus of cases that once failed (`corpus.txt`: each case's name and a digest of its bytes; the files are
regenerated from the name, so no model file is committed).

Plain seeded `random.Random` mutation rather than hypothesis: a case is a whole file run through the CLI in
a separate process (about 0.3 s), so hypothesis' shrinking would re-run hundreds of them per failure, its
example database would make CI runs depend on earlier ones, and its health checks fight a per-case budget.
A (family, seed) pair names each case exactly instead, in the test and in `tools/fuzz.py` alike, and a
failure is kept as that name with the digest of its bytes."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fuzz_bytes import BYTE_FAMILIES
from fuzz_graph import GRAPH_MUTATIONS
from fuzz_seeds import SEEDS, seed_model
from fuzz_tensors import TENSOR_MUTATIONS, to_external

__all__ = ["CORPUS", "Case", "FAMILIES", "corpus_cases", "corpus_entries", "digest", "generate", "save_case",
           "sequence"]

CORPUS = Path(__file__).resolve().parent / "corpus.txt"
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


def digest(case: Case) -> str:
    """16 hex digits of the sha256 of CASE's file names and bytes."""
    h = hashlib.sha256()
    for name in sorted(case.files):
        h.update(name.encode())
        h.update(case.files[name])
    return h.hexdigest()[:16]


def _regenerated(name: str) -> Case:
    family, _, seed = name.rsplit("-", 2)  # "<family>-<seed model>-<seed>"; families may hold "_", never "-"
    return generate(family, int(seed))


def save_case(case: Case, corpus: Path = CORPUS) -> Path:
    """Add CASE (its name and digest) to the CORPUS list, once; the list's path."""
    entries = corpus_entries(corpus) if corpus.is_file() else {}
    if case.name not in entries:
        with open(corpus, "a") as handle:
            handle.write(f"{case.name} {digest(case)}\n")
    return corpus


def corpus_entries(corpus: Path = CORPUS) -> dict[str, str]:
    """Case name -> digest of every case listed in CORPUS (comments and blank lines skipped)."""
    lines = [line.split() for line in corpus.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {name: value for name, value in lines}


def corpus_cases(corpus: Path = CORPUS) -> list[Case]:
    """Every case listed in CORPUS, regenerated from its name."""
    return [_regenerated(name) for name in corpus_entries(corpus)]
