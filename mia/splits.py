"""Disjoint target/shadow train and test splits, following the paper's protocol.

From the train pool a stratified subsample of ``2 * train_set_size`` images is halved
(stratified) into target-train and shadow-train; likewise ``2 * test_set_size`` images of
the test pool become target-test and shadow-test. Each half is stored in a seeded random
order and the attack sets are prefixes of it:

* members(role)     = train half[:attack_set_size]
* nonmembers(role)  = test half[:attack_set_size]
* calibration(role) = test half[attack_set_size:]  (disjoint from the attack non-members)
"""

from __future__ import annotations

import logging
import numbers
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)

ROLES = ("target", "shadow")
_ARRAYS = ("target_train", "shadow_train", "target_test", "shadow_test")


@dataclass(frozen=True, eq=False)
class Splits:
    """Index sets of one experiment.

    Attributes:
        target_train: int64 indices into the source's train pool (target model's data).
        shadow_train: int64 indices into the train pool (shadow model's data).
        target_test: int64 indices into the test pool (target's non-members/calibration).
        shadow_test: int64 indices into the test pool (shadow's non-members/calibration).
        attack_set_size: Members and non-members per model in the attack sets.
    """

    target_train: np.ndarray
    shadow_train: np.ndarray
    target_test: np.ndarray
    shadow_test: np.ndarray
    attack_set_size: int

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            array = np.array(getattr(self, name), dtype=np.int64)  # copy: callers can't mutate
            if array.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "attack_set_size", int(self.attack_set_size))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Splits):
            return NotImplemented
        return self.attack_set_size == other.attack_set_size and all(
            np.array_equal(getattr(self, n), getattr(other, n)) for n in _ARRAYS
        )

    __hash__ = None  # arrays are not hashable; equality is by value

    def train_half(self, role: str) -> np.ndarray:
        """The whole train half (train-pool indices) of ``role``'s model."""
        return self.target_train if _check_role(role) == "target" else self.shadow_train

    def test_half(self, role: str) -> np.ndarray:
        """The whole test half (test-pool indices) of ``role``'s model."""
        return self.target_test if _check_role(role) == "target" else self.shadow_test

    def members(self, role: str) -> np.ndarray:
        """Attack-set members of ``role``'s model: train-pool indices."""
        return self.train_half(role)[: self.attack_set_size]

    def nonmembers(self, role: str) -> np.ndarray:
        """Attack-set non-members of ``role``'s model: test-pool indices."""
        return self.test_half(role)[: self.attack_set_size]

    def calibration(self, role: str) -> np.ndarray:
        """Rest of ``role``'s test half (test-pool indices), disjoint from its non-members."""
        return self.test_half(role)[self.attack_set_size :]

    def save(self, path: str | Path) -> None:
        """Write to an ``.npz`` file atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    attack_set_size=np.int64(self.attack_set_size),
                    **{n: getattr(self, n) for n in _ARRAYS},
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        """Read splits written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            missing = [f.name for f in fields(cls) if f.name not in data.files]
            if missing:
                raise ValueError(f"{path} is not a splits file: missing {missing}")
            return cls(
                attack_set_size=int(data["attack_set_size"]),
                **{n: data[n] for n in _ARRAYS},
            )


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role={role!r} is unknown; allowed: {list(ROLES)}")
    return role


def _check_positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive int")
    return int(value)


def _validate(
    n_train: int, n_test: int, train_set_size: object, test_set_size: object, attack: object
) -> tuple[int, int, int]:
    """Check the sizes against each other and the pools; return them as ints."""
    train = _check_positive_int("split.train_set_size", train_set_size)
    test = _check_positive_int("split.test_set_size", test_set_size)
    attack = _check_positive_int("split.attack_set_size", attack)
    for key, size, pool in (
        ("split.train_set_size", train, n_train),
        ("split.test_set_size", test, n_test),
    ):
        if 2 * size > pool:
            raise ValueError(
                f"{key}={size} needs 2 x {size} = {2 * size} images but the pool has {pool}; "
                f"the maximum allowed is {pool // 2}"
            )
    if attack > min(train, test):
        raise ValueError(
            f"split.attack_set_size={attack} must be <= min(split.train_set_size, "
            f"split.test_set_size) = {min(train, test)}"
        )
    return train, test, attack


def _stratified_halves(
    labels: np.ndarray, size: int, rng: np.random.Generator, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw 2 x ``size`` stratified indices and halve them (stratified), each half shuffled."""
    seeds = rng.integers(0, 2**31 - 1, size=2)
    idx = np.arange(len(labels))
    try:
        if 2 * size < len(labels):
            idx, _ = train_test_split(
                idx, train_size=2 * size, stratify=labels, random_state=int(seeds[0])
            )
        first, second = train_test_split(
            idx, train_size=size, test_size=size, stratify=labels[idx], random_state=int(seeds[1])
        )
    except ValueError as err:
        raise ValueError(
            f"{key}={size} cannot be drawn stratified over {len(np.unique(labels))} classes: {err}"
        ) from err
    # Explicit shuffle: the prefix order must not depend on sklearn's internal ordering.
    return rng.permutation(first), rng.permutation(second)


def make_splits(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    train_set_size: int,
    test_set_size: int,
    attack_set_size: int,
    seed: int,
) -> Splits:
    """Draw the target/shadow splits of one experiment.

    Args:
        train_labels: ``(N_train,)`` labels of the train pool (array or tensor).
        test_labels: ``(N_test,)`` labels of the test pool.
        train_set_size: Training images per model (``split.train_set_size``).
        test_set_size: Test images per model (``split.test_set_size``).
        attack_set_size: Members and non-members per model in the attack sets.
        seed: Same seed gives identical splits.

    Raises:
        ValueError: A size is not a positive int, too large for its pool, or the attack set
            is larger than a half.
    """
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    train, test, attack = _validate(
        len(train_labels), len(test_labels), train_set_size, test_set_size, attack_set_size
    )
    rng = np.random.default_rng(seed)
    target_train, shadow_train = _stratified_halves(
        train_labels, train, rng, "split.train_set_size"
    )
    target_test, shadow_test = _stratified_halves(test_labels, test, rng, "split.test_set_size")
    log.info(
        "Splits (seed %d): %d train / %d test per model, %d attack members/non-members",
        seed,
        train,
        test,
        attack,
    )
    return Splits(target_train, shadow_train, target_test, shadow_test, attack)
