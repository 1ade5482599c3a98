"""Derived variants: a bf16/fp16 chunk stored as a cast of an archived fp32 chunk.

Hub repositories often hold a half-precision copy of a model next to its
fp32 weights. When a new BF16/F16 tensor piece equals (or almost equals) a
cast of the same-named, same-shaped fp32 piece already archived, it is stored
as the ``cast`` codec: the recipe plus a residual.

Recipes (``recipe`` metadata), applied to the base's little-endian fp32 bits:

- ``bf16-rne``: round to nearest, ties to even (torch ``.to(torch.bfloat16)``;
  NaN becomes the canonical 0x7FC0).
- ``bf16-trunc``: the top 16 bits (what truncating converters write).
- ``f16-rne``: IEEE binary16 round-to-nearest-even (numpy/torch ``.half()``).

The residual is ``new ^ cast(base)`` byte-grouped into planes ``r0``, ``r1``
(zstd or raw per ``kinds``); an exact cast (``exact`` = 1) stores no stream.
Snapshot pieces are cut by element count (archive/snapshot.py), so a BF16
piece covers exactly the elements of the fp32 piece with the same index and
one base suffices. Metadata also carries ``base`` and ``depth`` like deltas.
"""

from __future__ import annotations


from weightvault.archive._lazy import numpy as np
from weightvault.archive import codecs, delta
from weightvault.archive.native import NONE, XOR, native
from weightvault.errors import ChunkCorruptError

CODEC = "cast"
RECIPES = {"BF16": ("bf16-rne", "bf16-trunc"), "F16": ("f16-rne",)}
SOURCE_DTYPE = "F32"


def apply(recipe: str, base: bytes) -> np.ndarray:
    """Cast fp32 bytes with ``recipe``; returns the uint16 bit patterns (one C pass when built)."""
    return np.frombuffer(_cast_bytes(recipe, base), dtype="<u2")


def apply_numpy(recipe: str, base: bytes) -> np.ndarray:
    """The numpy reference for :func:`apply`."""
    u = np.frombuffer(base, dtype="<u4")
    if recipe == "bf16-trunc":
        return (u >> 16).astype("<u2")
    if recipe == "bf16-rne":
        out = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")
        nan = (u & 0x7FFFFFFF) > 0x7F800000
        if nan.any():
            out[nan] = 0x7FC0
        return out
    if recipe == "f16-rne":
        with np.errstate(over="ignore", invalid="ignore"):
            return u.view("<f4").astype("<f2").view("<u2")
    raise ValueError(f"unknown cast recipe {recipe!r}")


def encode(raw, chunk_id: str, dtype: str, base: bytes, base_id: str, *, base_depth: int = 0,
           level: int | None = None) -> codecs.EncodedChunk | None:
    """Encode a BF16/F16 chunk as a cast of ``base`` (fp32 bytes of the same elements).

    Returns:
        The container for the recipe with the fewest differing elements, or
        None when no recipe applies (wrong dtype or lengths).
    """
    recipes = RECIPES.get(dtype)
    if not recipes or len(base) != 2 * len(raw) or not raw:
        return None
    best = None
    for recipe in recipes:
        n_diff, resid = _residual(raw, recipe, base)
        if best is None or n_diff < best[1]:
            best = (recipe, n_diff, resid)
        if n_diff == 0:
            break
    recipe, n_diff, resid = best
    level = codecs.FLOAT_LEVEL if level is None else level
    extra = {"base": base_id, "depth": base_depth + 1, "recipe": recipe, "source_dtype": SOURCE_DTYPE}
    if n_diff == 0:
        meta = codecs.chunk_meta(chunk_id, len(raw), CODEC, exact=1, **extra)
        return codecs.EncodedChunk(codecs.container(meta, {}), CODEC, len(raw), base_id)
    if native is not None:
        r0, r1 = native.planes_split(resid, None, 2, NONE)
    else:
        pb = np.frombuffer(resid, dtype=np.uint8).reshape(-1, 2)
        r0, r1 = np.ascontiguousarray(pb[:, 0]), np.ascontiguousarray(pb[:, 1])
    streams, kinds = codecs.compress_streams({"r0": r0, "r1": r1}, level)
    meta = codecs.chunk_meta(chunk_id, len(raw), CODEC, exact=0, kinds=",".join(kinds), level=level,
                             n_diff=n_diff, **extra)
    return codecs.EncodedChunk(codecs.container(meta, streams), CODEC, len(raw), base_id)


def _cast_bytes(recipe: str, base) -> bytes:
    if native is not None and recipe in ("bf16-rne", "bf16-trunc"):
        return native.cast_bf16(base, recipe == "bf16-rne")
    return apply_numpy(recipe, base).tobytes()


def _residual(raw, recipe: str, base) -> tuple[int, bytes | None]:
    """(elements where ``raw`` differs from the cast of ``base``, their XOR as bytes or None)."""
    casted = _cast_bytes(recipe, base)
    if native is not None:
        return native.xor_count(raw, casted, 2)
    resid = np.frombuffer(raw, dtype="<u2") ^ np.frombuffer(casted, dtype="<u2")
    n_diff = int(np.count_nonzero(resid))
    return n_diff, (resid.tobytes() if n_diff else None)


def recipe_of(h: codecs.ChunkHeader) -> tuple[str, bool]:
    """(recipe, exact) of a cast container."""
    return h.meta.get("recipe", ""), h.meta.get("exact") == "1"


def _decode(h, container, chunk_id, get_raw):
    recipe = h.meta.get("recipe")
    if not h.base or recipe not in {r for rs in RECIPES.values() for r in rs} or h.raw_len % 2:
        raise ChunkCorruptError(chunk_id, "cast container lacks base/recipe")
    n = h.raw_len // 2
    base = delta.fetch_base(get_raw, h.base, chunk_id, 2 * h.raw_len)
    casted = _cast_bytes(recipe, base)
    if h.meta.get("exact") == "1":
        return casted
    try:
        kinds = h.meta["kinds"].split(",")
    except KeyError:
        raise ChunkCorruptError(chunk_id, "cast container lacks kinds") from None
    if len(kinds) != 2:
        raise ChunkCorruptError(chunk_id, "cast residual needs two planes")
    s = codecs.decompress_streams(h, container, chunk_id, {"r0": kinds[0], "r1": kinds[1]}, {"r0": n, "r1": n})
    for k in range(2):
        if len(s[f"r{k}"]) != n:
            raise ChunkCorruptError(chunk_id, f"cast residual plane {k} has {len(s[f'r{k}'])} bytes, expected {n}")
    if native is not None:
        return native.planes_join((s["r0"], s["r1"]), casted, XOR)
    pb = np.empty((n, 2), dtype=np.uint8)
    for k in range(2):
        pb[:, k] = np.frombuffer(s[f"r{k}"], dtype=np.uint8)
    return (np.frombuffer(casted, dtype="<u2") ^ pb.reshape(-1).view("<u2")).tobytes()


codecs.DECODERS[CODEC] = _decode
