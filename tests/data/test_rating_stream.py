"""The time-ordered rating stream: ordering, dense ids, the test part, batches, the loader."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tfembsize.data import (
    MalformedFileError,
    RatingStream,
    load_movielens,
    load_rating_stream,
    rating_stream_dataset,
)


def test_from_raw_sorts_by_time_stably_and_remaps_ids_densely():
    users = [30, 10, 30, 20, 10, 20, 30, 10, 20, 40]
    items = [5, 7, 9, 5, 5, 9, 7, 9, 7, 5]
    ratings = [5, 1, 4, 3, 2, 5, 4, 3, 2, 1]
    times = [50, 10, 10, 30, 20, 40, 10, 60, 70, 80]  # three ties at t = 10
    stream = RatingStream.from_raw(users, items, ratings, times, name="toy")
    # order by time, ties in input order: positions 1, 2, 6 (t=10), 4, 3, 5, 0, 7, 8, 9
    order = [1, 2, 6, 4, 3, 5, 0, 7, 8, 9]
    assert stream.timestamps.tolist() == [times[j] for j in order]
    assert stream.user_ids.tolist() == [10, 20, 30, 40] and stream.item_ids.tolist() == [5, 7, 9]
    dense_u = {10: 0, 20: 1, 30: 2, 40: 3}
    dense_i = {5: 0, 7: 1, 9: 2}
    assert stream.users.tolist() == [dense_u[users[j]] for j in order]
    assert stream.items.tolist() == [dense_i[items[j]] for j in order]
    assert stream.ratings.tolist() == [float(ratings[j]) for j in order]
    assert stream.users.dtype == np.int32 and stream.ratings.dtype == np.float32
    # the last 20 % are the test part
    assert (stream.num_interactions, stream.test_start, stream.num_test) == (10, 8, 2)
    assert stream.frequencies("user").tolist() == [3, 3, 3, 1]
    assert stream.frequencies("item").tolist() == [4, 3, 3]
    assert "10 interactions, 4 users, 3 items" in repr(stream)


def test_the_test_fraction_and_a_prefix_of_the_stream():
    n = 103
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, n), rng.integers(100, 180, n)
    times = rng.permutation(n) * 7
    full = RatingStream.from_raw(users, items, np.full(n, 4), times, test_fraction=0.3)
    assert full.test_start == n - round(0.3 * n) == 72
    first = RatingStream.from_raw(users, items, np.full(n, 4), times, max_interactions=40)
    order = np.argsort(times, kind="stable")[:40]
    assert first.num_interactions == 40 and first.test_start == 32
    # only the entities of the prefix get rows
    assert first.user_ids.tolist() == np.unique(users[order]).tolist()
    assert first.num_items == np.unique(items[order]).size
    np.testing.assert_array_equal(first.user_ids[first.users], users[order])


def test_bad_streams_are_refused_naming_the_argument():
    ok = ([0, 1, 0], [0, 0, 1], [4, 2, 5], [1, 2, 3])
    with pytest.raises(ValueError, match=r"`test_fraction` must be in \(0, 1\). Received: test"):
        RatingStream.from_raw(*ok, test_fraction=1.0)
    with pytest.raises(ValueError, match=r"`max_interactions` must be a positive integer"):
        RatingStream.from_raw(*ok, max_interactions=0)
    with pytest.raises(ValueError, match=r"`ratings` must lie in \[0.5, 5.0\].*rating 6"):
        RatingStream.from_raw([0, 1, 0], [0, 0, 1], [4, 6, 5], [1, 2, 3])
    with pytest.raises(ValueError, match=r"same length. Received lengths 3, 2, 3 and 3"):
        RatingStream.from_raw([0, 1, 0], [0, 0], [4, 2, 5], [1, 2, 3])
    with pytest.raises(ValueError, match=r"has no interaction in one of its parts"):
        RatingStream.from_raw([0, 1], [0, 0], [4, 2], [1, 2], test_fraction=0.1)
    with pytest.raises(ValueError, match=r"`timestamps` must be non-decreasing.*position 2"):
        RatingStream([0, 1, 0], [0, 0, 1], [4, 2, 5], [1, 3, 2], test_start=2)
    with pytest.raises(ValueError, match=r"`test_start` must be in \[1, 3\).*test_start=3"):
        RatingStream([0, 1, 0], [0, 0, 1], [4, 2, 5], [1, 2, 3], test_start=3)
    with pytest.raises(ValueError, match=r"`items` must be < num_items=1. Received id 1"):
        RatingStream([0, 1, 0], [0, 0, 1], [4, 2, 5], [1, 2, 3], test_start=2, num_items=1)
    with pytest.raises(ValueError, match=r"`users` must be a 1-D array of integers"):
        RatingStream([0.5, 1, 0], [0, 0, 1], [4, 2, 5], [1, 2, 3], test_start=2)


def test_batches_and_the_dataset_follow_the_stream():
    n = 23
    stream = RatingStream(
        np.arange(n) % 5,
        np.arange(n) % 7,
        1 + np.arange(n) % 5,
        np.arange(n),
        test_start=17,
    )
    assert stream.num_steps(5) == 5
    last = stream.batch_at(4, 5)
    assert last["user"].tolist() == [0, 1, 2] and last["test"].tolist() == [True] * 3
    middle = stream.batch_at(3, 5)
    assert middle["test"].tolist() == [False, False, True, True, True]  # 15, 16 | 17, 18, 19
    with pytest.raises(ValueError, match=r"`step` must be < 5"):
        stream.batch_at(5, 5)
    batches = list(rating_stream_dataset(stream, 5, start_step=2))
    assert len(batches) == 3
    for t, got in enumerate(batches):
        want = stream.batch_at(2 + t, 5)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key].numpy(), value)
    assert batches[0]["rating"].dtype.name == "float32"
    assert batches[0]["user"].dtype.name == "int32" and batches[0]["test"].dtype.name == "bool"
    assert list(rating_stream_dataset(stream, 5, start_step=5)) == []


def test_ml100k_is_read_in_time_order(data_dir):
    with gzip.open(data_dir / "ml-100k" / "u.data.gz", "rt") as f:
        rows = np.array([line.split("\t") for line in f.read().splitlines()], dtype=np.int64)
    order = np.argsort(rows[:, 3], kind="stable")[:3000]
    stream = load_rating_stream("ml-100k", max_interactions=3000, data_root=data_dir)
    assert stream.num_interactions == 3000 and stream.test_start == 2400
    np.testing.assert_array_equal(stream.timestamps, rows[order, 3])
    np.testing.assert_array_equal(stream.user_ids[stream.users], rows[order, 0])
    np.testing.assert_array_equal(stream.item_ids[stream.items], rows[order, 1])
    np.testing.assert_array_equal(stream.ratings, rows[order, 2].astype(np.float32))
    assert stream.name == "ml-100k" and stream.num_users == np.unique(rows[order, 0]).size
    # the whole file, through the path of the folder
    whole = load_rating_stream(data_dir / "ml-100k")
    assert (whole.num_interactions, whole.num_users, whole.num_items) == (100_000, 943, 1682)
    assert whole.test_start == 80_000 and (np.diff(whole.timestamps) >= 0).all()


def test_a_fractional_rating_is_a_malformed_line(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::4::978300760\n2::11::3.5::978300761\n")
    with pytest.raises(MalformedFileError, match=r"line 2: the user id, item id, rating and"):
        load_rating_stream(path)
    # the last field of a line ends at its newline (also for the implicit-feedback loader)
    path.write_text("1::10::4::978300760\n2::11::3::978300761\n1::11::5::97\n")
    stream = load_rating_stream(path, test_fraction=0.34)
    assert stream.timestamps.tolist() == [97, 978300760, 978300761]
    assert stream.ratings.tolist() == [5.0, 4.0, 3.0]
    assert load_movielens(path).num_interactions == 3
