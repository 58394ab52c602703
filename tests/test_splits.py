from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from mia.splits import Splits, make_splits

# Unbalanced classes so stratification is visible: class k has 40 + 20 * k images.
TRAIN_LABELS = np.repeat(np.arange(5), [40, 60, 80, 100, 120])  # 400
TEST_LABELS = np.repeat(np.arange(5), [20, 30, 40, 50, 60])  # 200


def _splits(seed: int = 0, **sizes: int) -> Splits:
    args = {"train_set_size": 100, "test_set_size": 60, "attack_set_size": 25} | sizes
    return make_splits(TRAIN_LABELS, TEST_LABELS, seed=seed, **args)


def test_sizes_and_dtype() -> None:
    s = _splits()
    for half in (s.target_train, s.shadow_train):
        assert half.shape == (100,) and half.dtype == np.int64
    for half in (s.target_test, s.shadow_test):
        assert half.shape == (60,) and half.dtype == np.int64
    for role in ("target", "shadow"):
        assert len(s.members(role)) == 25
        assert len(s.nonmembers(role)) == 25
        assert len(s.calibration(role)) == 35


def test_disjoint() -> None:
    s = _splits()
    assert not set(s.target_train) & set(s.shadow_train)
    assert not set(s.target_test) & set(s.shadow_test)
    test_sets = [s.nonmembers(r) for r in ("target", "shadow")]
    test_sets += [s.calibration(r) for r in ("target", "shadow")]
    for a, b in combinations(test_sets, 2):
        assert not set(a) & set(b)
    for role in ("target", "shadow"):
        # Non-members + calibration reassemble the test half exactly.
        both = np.concatenate([s.nonmembers(role), s.calibration(role)])
        np.testing.assert_array_equal(both, s.test_half(role))
        np.testing.assert_array_equal(s.members(role), s.train_half(role)[:25])
    assert s.target_train.max() < len(TRAIN_LABELS) and s.target_test.max() < len(TEST_LABELS)


@pytest.mark.parametrize("train_set_size", [100, 200])  # 200: whole pool, no subsampling
def test_stratified(train_set_size: int) -> None:
    s = _splits(train_set_size=train_set_size)
    for labels, halves, size in (
        (TRAIN_LABELS, (s.target_train, s.shadow_train), train_set_size),
        (TEST_LABELS, (s.target_test, s.shadow_test), 60),
    ):
        proportion = np.bincount(labels) / len(labels)
        for half in halves:
            counts = np.bincount(labels[half], minlength=5)
            assert np.all(np.abs(counts - proportion * size) <= 1), counts


def test_whole_pool_is_used_when_twice_size_equals_pool() -> None:
    s = _splits(train_set_size=200, test_set_size=100)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([s.target_train, s.shadow_train])), np.arange(400)
    )
    np.testing.assert_array_equal(
        np.sort(np.concatenate([s.target_test, s.shadow_test])), np.arange(200)
    )


def test_seeded() -> None:
    assert _splits(seed=3) == _splits(seed=3)
    a, b = _splits(seed=3), _splits(seed=4)
    assert a != b
    assert not np.array_equal(a.target_train, b.target_train)
    assert not np.array_equal(a.target_test, b.target_test)


def test_halves_are_shuffled() -> None:
    s = _splits()
    assert not np.all(np.diff(s.target_train) > 0)
    # Members are not all from one class (order isn't grouped by label).
    assert len(np.unique(TRAIN_LABELS[s.members("target")])) > 1


def test_save_load_round_trip(tmp_path) -> None:
    s = _splits(seed=7)
    path = tmp_path / "sub" / "splits.npz"
    s.save(path)
    loaded = Splits.load(path)
    assert loaded == s
    for name in ("target_train", "shadow_train", "target_test", "shadow_test"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(s, name))
        assert getattr(loaded, name).dtype == np.int64
    assert loaded.attack_set_size == 25
    assert [p.name for p in path.parent.iterdir()] == ["splits.npz"]  # no temp file left


def test_arrays_are_read_only() -> None:
    s = _splits()
    with pytest.raises(ValueError):
        s.target_train[0] = 0


def test_bad_role() -> None:
    with pytest.raises(ValueError, match="'victim'"):
        _splits().members("victim")


@pytest.mark.parametrize(
    ("sizes", "key", "value"),
    [
        ({"train_set_size": 0}, "split.train_set_size", "0"),
        ({"train_set_size": 2.5}, "split.train_set_size", "2.5"),
        ({"test_set_size": -3}, "split.test_set_size", "-3"),
        ({"attack_set_size": True}, "split.attack_set_size", "True"),
        ({"train_set_size": 201}, "split.train_set_size", "201"),
        ({"test_set_size": 101}, "split.test_set_size", "101"),
        ({"attack_set_size": 61}, "split.attack_set_size", "61"),
    ],
)
def test_errors_name_key_and_value(sizes: dict, key: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        _splits(**sizes)
    assert key in str(info.value) and value in str(info.value)


def test_pool_too_small_message_gives_limits() -> None:
    with pytest.raises(ValueError) as info:
        _splits(train_set_size=201)
    message = str(info.value)
    assert "400" in message and "200" in message
