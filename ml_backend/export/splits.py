"""Train/val/test splits: stratified by class, near-duplicates kept together, deterministic
under a seed, and stable when the project grows (pure functions).

Near-duplicates are found by the difference hash (``imagehash.dhash``: a 9 × 8 grayscale
thumbnail, one bit per horizontal neighbour pair). Images whose hashes differ in at most
:data:`NEAR_DUPLICATE_BITS` of 64 bits form one group (transitively), and a group goes to one
split, so a val image is never a re-encode or a slight crop of a train image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ml_backend.export.dataset import SPLITS, Split

NEAR_DUPLICATE_BITS = 6  # of 64: re-encodes and small shifts differ by a few bits
HASH_SIZE = 8
NO_CLASS = ""  # the stratum of images without labels


def dhash(pixels: np.ndarray, size: int = HASH_SIZE) -> int:
    """``imagehash.dhash`` of an ``(H, W, 3)`` or ``(H, W)`` uint8 image as an int: the image
    as ``size + 1`` × ``size`` grayscale, bit set where a pixel is brighter than its right
    neighbour, row-major, first bit most significant."""
    import imagehash
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return int(str(imagehash.dhash(image, hash_size=size)), 16)


def hamming(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


def near_duplicate_groups(hashes: Sequence[int], max_bits: int = NEAR_DUPLICATE_BITS
                          ) -> list[int]:
    """A group number per hash: hashes within ``max_bits`` of each other share one,
    transitively (union-find). Numbers are the smallest member index of each group."""
    n = len(hashes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    values = np.array([h & 0xFFFFFFFFFFFFFFFF for h in hashes], dtype=np.uint64)
    for i in range(n):
        # Popcount of the XOR with every later hash, a row at a time (n²/2 ops in numpy).
        xor = np.bitwise_xor(values[i + 1:], values[i])
        bits = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        for j in np.flatnonzero(bits <= max_bits) + i + 1:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(n)]


@dataclass(frozen=True)
class SplitCandidate:
    """One image to place: its task, near-duplicate group and stratum (the rarest class of
    its group; :data:`NO_CLASS` when it has none). Members of a group share a stratum."""

    task_id: int
    group: int
    stratum: str


def rarest_class(names: Iterable[str], frequency: Mapping[str, int]) -> str:
    """The class of ``names`` that fewest images have (ties: by name); NO_CLASS for none."""
    present = set(names)
    if not present:
        return NO_CLASS
    return min(present, key=lambda name: (frequency.get(name, 0), name))


def split_candidates(task_ids: Sequence[int], class_names: Sequence[Sequence[str]],
                     hashes: Sequence[int], max_bits: int = NEAR_DUPLICATE_BITS
                     ) -> list[SplitCandidate]:
    """Candidates for :func:`assign_splits`: near-duplicate groups from ``hashes``, and as
    every member's stratum the rarest class of the whole group (rarity: how many images
    have the class), so a group with one rare object is stratified as that class."""
    groups = near_duplicate_groups(hashes, max_bits)
    frequency = Counter(name for names in class_names for name in set(names))
    group_names: dict[int, set[str]] = {}
    for group, names in zip(groups, class_names, strict=True):
        group_names.setdefault(group, set()).update(names)
    strata = {g: rarest_class(names, frequency) for g, names in group_names.items()}
    return [SplitCandidate(int(t), g, strata[g]) for t, g in zip(task_ids, groups, strict=True)]


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8/0.1/0.1"`` (or three numbers) → ratios summing to 1. A ValueError says why
    not."""
    parts = text.split("/") if isinstance(text, str) else list(text)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"split must be three numbers like 0.8/0.1/0.1, got {text!r}"
                         ) from None
    if len(values) != 3 or any(v < 0 or v != v for v in values) or values[0] <= 0:
        raise ValueError(f"split must be three non-negative numbers train/val/test with "
                         f"train > 0, like 0.8/0.1/0.1; got {text!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def assign_splits(candidates: Sequence[SplitCandidate], ratios: Sequence[float], seed: int,
                  previous: Mapping[int, Split] | None = None) -> dict[int, Split]:
    """Each candidate's split.

    - A task in ``previous`` keeps its split (a re-export never moves an image between
      train and val, which would leak a trained-on image into evaluation).
    - A new task joins the split of an earlier task in its near-duplicate group (the first
      one's, by task id); otherwise its group is placed whole.
    - New groups are placed per stratum in a seeded shuffle, each into the split furthest
      below its share of the stratum (counting earlier tasks), so every class is split by
      ``ratios`` as far as whole groups allow, and new tasks restore the ratios.
    """
    previous = dict(previous or {})
    rng = np.random.default_rng(seed)
    out: dict[int, Split] = {}
    groups: dict[int, list[SplitCandidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.group, []).append(candidate)
    counts: dict[str, dict[Split, float]] = {}
    new_groups: dict[str, list[list[SplitCandidate]]] = {}
    for members in groups.values():
        members.sort(key=lambda c: c.task_id)
        earlier = [previous[c.task_id] for c in members if c.task_id in previous]
        for member in members:
            if member.task_id in previous:
                out[member.task_id] = previous[member.task_id]
                tally = counts.setdefault(member.stratum, dict.fromkeys(SPLITS, 0.0))
                tally[previous[member.task_id]] += 1
        fresh = [c for c in members if c.task_id not in previous]
        if earlier:
            for member in fresh:
                out[member.task_id] = earlier[0]
                counts.setdefault(member.stratum, dict.fromkeys(SPLITS, 0.0))[earlier[0]] += 1
        elif fresh:
            new_groups.setdefault(fresh[0].stratum, []).append(fresh)
    for stratum in sorted(new_groups):
        pending = sorted(new_groups[stratum], key=lambda g: g[0].task_id)
        order = rng.permutation(len(pending))
        tally = counts.setdefault(stratum, dict.fromkeys(SPLITS, 0.0))
        total = sum(tally.values()) + sum(len(g) for g in pending)
        for index in order:
            group = pending[int(index)]
            # The split furthest below its target share of the whole stratum (ties: in
            # train, val, test order); a split with ratio 0 is never chosen.
            deficit = [(ratios[k] * total - tally[s]) if ratios[k] > 0 else -np.inf
                       for k, s in enumerate(SPLITS)]
            split = SPLITS[int(np.argmax(deficit))]
            tally[split] += len(group)
            for member in group:
                out[member.task_id] = split
    return out


def split_shares(assignment: Mapping[int, Split]) -> dict[str, int]:
    return {s.value: sum(1 for v in assignment.values() if v is s) for s in SPLITS}
