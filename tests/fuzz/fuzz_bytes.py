"""Byte-level fuzz families: the serialized seed models with bits flipped, cut short, spliced into each other,
or with bytes inserted or overwritten. Protobuf parses surprisingly much of this, so most cases reach the
graph code with garbage field values, not just the parser."""

from __future__ import annotations

import random

from fuzz_seeds import SEEDS, seed_bytes

__all__ = ["BYTE_FAMILIES"]

#: Byte patterns worth inserting: varint continuation bytes (a length that never ends), a 10-byte varint
#: (a 64-bit length), field tags of the graph's node / initializer fields, zeros.
_PATTERNS = [b"\xff" * 10, b"\x80" * 9 + b"\x01", b"\x3a\xff\xff\xff\xff\x0f", b"\x0a\x00", b"\x00" * 16,
             b"\x42\x10", b"\x8a\x01\x05hello"]


def bitflip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 8, 32])):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def splice(rng: random.Random, data: bytes) -> bytes:
    """The head of DATA joined to the tail of another seed (a model whose fields switch mid-way)."""
    other = seed_bytes(rng.choice(sorted(SEEDS)))
    return data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]


def insert(rng: random.Random, data: bytes) -> bytes:
    position = rng.randrange(len(data) + 1)
    payload = rng.choice(_PATTERNS) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 64))
    return data[:position] + payload + data[position:]


def overwrite(rng: random.Random, data: bytes) -> bytes:
    position = rng.randrange(len(data))
    payload = rng.randbytes(rng.randint(1, 16))
    return data[:position] + payload + data[position + len(payload):]


def _byte_family(mutate):
    def family(rng: random.Random) -> tuple[str, dict[str, bytes]]:
        seed = rng.choice(sorted(SEEDS))
        return seed, {"in.onnx": mutate(rng, seed_bytes(seed))}

    family.__name__ = mutate.__name__
    family.__doc__ = mutate.__doc__
    return family


BYTE_FAMILIES = {fn.__name__: _byte_family(fn) for fn in (bitflip, truncate, splice, insert, overwrite)}
