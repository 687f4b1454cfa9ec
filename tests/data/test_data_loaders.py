"""Loaders: LightGCN text files, MovieLens ratings, load_dataset, malformed lines, real data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tfembsize.data import (
    EmptyDataFileError,
    MalformedFileError,
    default_data_root,
    load_dataset,
    load_lightgcn,
    load_movielens,
)


def write(path, text, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(text.encode())
    else:
        path.write_bytes(text.encode())


def pairs(d):
    return sorted(zip(d.user_ids[d.users].tolist(), d.item_ids[d.items].tolist(), strict=True))


# LightGCN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_lightgcn_merges_train_and_test(tmp_path, gz):
    write(tmp_path / "train.txt", "0 5 3\n1 3\n2 7 5 4\n", gz)
    write(tmp_path / "test.txt", "0 4\n1 5 7\n2 3\n", gz)
    d = load_lightgcn(tmp_path)
    assert pairs(d) == [
        (0, 3),
        (0, 4),
        (0, 5),
        (1, 3),
        (1, 5),
        (1, 7),
        (2, 3),
        (2, 4),
        (2, 5),
        (2, 7),
    ]
    assert d.item_ids.tolist() == [3, 4, 5, 7]  # ids remapped to the items that appear
    assert (d.num_users, d.num_items, d.duplicates_removed) == (3, 4, 0)
    assert d.name == tmp_path.name


def test_lightgcn_whitespace_crlf_empty_lines_and_itemless_users(tmp_path):
    write(tmp_path / "train.txt", "0 1  2 \r\n\n1\t2\n3\n")  # user 3 has no items
    d = load_lightgcn(tmp_path)  # no test.txt: train alone (a warning)
    assert pairs(d) == [(0, 1), (0, 2), (1, 2)]
    assert d.user_ids.tolist() == [0, 1]


def test_lightgcn_counts_duplicates(tmp_path, caplog):
    write(tmp_path / "train.txt", "0 1 1 2\n")
    write(tmp_path / "test.txt", "0 2\n")
    with caplog.at_level("WARNING"):
        d = load_lightgcn(tmp_path)
    assert d.num_interactions == 2 and d.duplicates_removed == 2
    assert "2 repeated (user, item) pairs kept once" in caplog.text


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("0 1 2\n1 2 x\n", 2, "unexpected character 'x'"),
        ("0 1\n1 2\n2 -3\n", 3, "unexpected character '-'"),
        ("0 1.5\n", 1, r"unexpected character '\.'"),
        ("0 1\n1 1234567890123456789\n", 2, "number longer than 18 digits"),
    ],
)
def test_lightgcn_malformed_line(tmp_path, text, line, reason):
    write(tmp_path / "train.txt", "0 1\n")
    write(tmp_path / "test.txt", text, gz=True)
    with pytest.raises(MalformedFileError, match=rf"test\.txt\.gz, line {line}: {reason}") as e:
        load_lightgcn(tmp_path)
    assert e.value.line_number == line
    assert e.value.path.endswith("test.txt.gz")
    assert e.value.line == text.split("\n")[line - 1]


def test_lightgcn_missing_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="must hold train.txt or train.txt.gz"):
        load_lightgcn(tmp_path)


# MovieLens -----------------------------------------------------------------------------------


ML1M = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
ML100K = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t1\t878887116\n"


@pytest.mark.parametrize("gz", [False, True])
def test_movielens_1m_format_keeps_first_line(tmp_path, gz):
    write(tmp_path / "ml-1m" / "ratings.dat", ML1M, gz)
    d = load_movielens(tmp_path / "ml-1m")
    assert pairs(d) == [(1, 661), (1, 1193), (2, 1193)]  # the first line (1, 1193) is kept
    assert d.name == "ml-1m"


@pytest.mark.parametrize("gz", [False, True])
def test_movielens_100k_format(tmp_path, gz):
    write(tmp_path / "u.data", ML100K, gz)
    path = tmp_path / ("u.data.gz" if gz else "u.data")
    d = load_movielens(path)
    assert pairs(d) == [(186, 302), (196, 242), (196, 302)]
    assert d.user_ids.tolist() == [186, 196] and d.item_ids.tolist() == [242, 302]


def test_movielens_sniffs_separator_crlf_and_float_ratings(tmp_path):
    write(tmp_path / "r.txt", "1::10::4.5::97\r\n2::10::3::98\r\n")
    assert pairs(load_movielens(tmp_path / "r.txt")) == [(1, 10), (2, 10)]
    write(tmp_path / "t.tsv", "1\t10\t4\t97\n")
    assert pairs(load_movielens(tmp_path / "t.tsv")) == [(1, 10)]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("1::1::5::1\n1::2::5\n", 2, r"expected 4 fields separated by '::', found 3"),
        ("1::1::5::1\n\n2::::5::1\n", 3, "empty field"),
        ("1::1::5::1\n2::3::5::1::\n", 2, "empty field"),
        ("1::1::5::1\n2::x::5::1\n", 2, "unexpected character 'x'"),
        ("1::1.5::5::1\n", 1, "id fields must be integers"),
        ("1::1::5::1\n1:2::5::1\n", 2, "unexpected character ':'"),
        ("1::1::5::1\n1\t2::5::1\n", 2, r"unexpected character '\\t'"),
    ],
)
def test_movielens_malformed_line(tmp_path, text, line, reason):
    write(tmp_path / "ratings.dat", text)
    with pytest.raises(MalformedFileError, match=rf"ratings\.dat, line {line}: {reason}"):
        load_movielens(tmp_path / "ratings.dat")


def test_movielens_malformed_tab_file(tmp_path):
    write(tmp_path / "u.data", "1\t2\t3\t4\n5\t6\t7\n")
    with pytest.raises(
        MalformedFileError, match=r"u\.data, line 2: expected 4 fields separated by '\\t', found 3"
    ):
        load_movielens(tmp_path / "u.data")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("text", ["", "  \n\t\n", "\n\n", "0\n1\n"])
def test_an_empty_lightgcn_train_file_is_refused_naming_it(tmp_path, text, gz):
    write(tmp_path / "train.txt", text, gz)
    write(tmp_path / "test.txt", "0 4\n1 5 7\n")  # only the test pairs would be left
    name = "train.txt.gz" if gz else "train.txt"
    with pytest.raises(EmptyDataFileError, match=rf"'.*{name}' holds no \(user, item\) pairs") as e:
        load_lightgcn(tmp_path)
    assert e.value.path.endswith(name)
    with pytest.raises(EmptyDataFileError, match="download or copy the file again"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("stem", ["u.data", "ratings.dat"])
@pytest.mark.parametrize("text", ["", "   \n", "\n\n\r\n"])
def test_an_empty_movielens_file_is_refused_naming_it(tmp_path, stem, text):
    write(tmp_path / "ml" / stem, text)
    with pytest.raises(EmptyDataFileError, match=rf"'.*ml/{stem}' holds no \(user, item\) pairs"):
        load_movielens(tmp_path / "ml")
    with pytest.raises(EmptyDataFileError, match=rf"{stem}' holds no"):
        load_dataset(tmp_path / "ml" / stem)


def test_movielens_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        load_movielens(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such MovieLens file"):
        load_movielens(tmp_path / "nope.dat")


# load_dataset --------------------------------------------------------------------------------


def test_load_dataset_synthetic_and_paths(tmp_path):
    syn = load_dataset("synthetic")
    assert (syn.num_users, syn.num_items, syn.num_interactions) == (1000, 1500, 40_000)
    write(tmp_path / "lg" / "train.txt", "0 1\n")
    write(tmp_path / "ml" / "u.data", ML100K)
    assert load_dataset(tmp_path / "lg").num_interactions == 1
    assert load_dataset(str(tmp_path / "ml")).num_interactions == 3
    assert load_dataset(tmp_path / "ml" / "u.data").num_interactions == 3
    # a bare folder name under data_root
    assert load_dataset("lg", data_root=tmp_path).name == "lg"


def test_load_dataset_named_under_data_root(tmp_path, monkeypatch):
    write(tmp_path / "ml-100k" / "u.data", ML100K, gz=True)
    assert load_dataset("ml-100k", data_root=tmp_path).num_interactions == 3
    monkeypatch.setenv("TFEMBSIZE_DATA_DIR", str(tmp_path))
    assert default_data_root() == tmp_path
    assert load_dataset("ML-100K").name == "ml-100k"
    with pytest.raises(FileNotFoundError, match="Data set 'gowalla' not found.*TFEMBSIZE_DATA_DIR"):
        load_dataset("gowalla")


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`name_or_dir` must be one of \('gowalla'"):
        load_dataset("movielens-20m", data_root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither LightGCN files"):
        load_dataset(tmp_path / "empty")


def test_default_data_root_is_shared_data(monkeypatch):
    monkeypatch.delenv("TFEMBSIZE_DATA_DIR", raising=False)
    root = default_data_root()
    assert root.parts[-2:] == ("shared", "data")
    assert (root.parent.parent / "main" / "tfembsize").is_dir() or root.parent.name == "shared"


# Real files ----------------------------------------------------------------------------------


def test_gowalla_statistics(gowalla):
    assert (gowalla.num_users, gowalla.num_items, gowalla.num_interactions) == (
        29_858,
        40_981,
        1_027_370,
    )
    assert gowalla.duplicates_removed == 0
    # ids in the LightGCN files are already contiguous: the maps are the identity
    assert np.array_equal(gowalla.user_ids, np.arange(29_858))
    assert np.array_equal(gowalla.item_ids, np.arange(40_981))


def test_gowalla_equals_a_plain_python_parse(data_dir, gowalla):
    users, items = [], []
    for name in ("train.txt.gz", "test.txt.gz"):
        with gzip.open(data_dir / "gowalla" / name, "rt") as f:
            for line in f:
                u, *its = (int(x) for x in line.split())
                users.extend([u] * len(its))
                items.extend(its)
    keys = np.sort(np.asarray(users, np.int64) * 40_981 + np.asarray(items, np.int64))
    assert np.array_equal(keys, gowalla.keys())


def test_ml100k_equals_a_plain_python_parse(data_dir, ml100k):
    with gzip.open(data_dir / "ml-100k" / "u.data.gz", "rt") as f:
        rows = [tuple(int(x) for x in line.split("\t")[:2]) for line in f]
    assert len(rows) == 100_000
    raw_u = ml100k.user_ids[ml100k.users]
    raw_i = ml100k.item_ids[ml100k.items]
    assert sorted(rows) == sorted(zip(raw_u.tolist(), raw_i.tolist(), strict=True))


def test_ml1m_statistics(ml1m):
    assert (ml1m.num_users, ml1m.num_items, ml1m.num_interactions) == (6_040, 3_706, 1_000_209)
    assert ml1m.duplicates_removed == 0
    assert ml1m.user_ids[0] == 1 and ml1m.user_ids[-1] == 6040
    assert ml1m.item_ids[0] == 1 and ml1m.item_ids[-1] == 3952
    # the first line of ratings.dat (1::1193::5::978300760) is a positive
    assert ml1m.contains(ml1m.user_index([1]), ml1m.item_index([1193])).tolist() == [True]


def test_ml100k_statistics(ml100k):
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_interactions) == (943, 1_682, 100_000)
    assert np.array_equal(ml100k.user_ids, np.arange(1, 944))
    assert np.array_equal(ml100k.item_ids, np.arange(1, 1683))
    # first line of u.data: 196 242 3 881250949
    assert ml100k.contains(ml100k.user_index([196]), ml100k.item_index([242])).tolist() == [True]


def test_load_dataset_by_name_matches_loaders(data_dir, ml100k):
    assert load_dataset("ml-100k", data_root=data_dir) == ml100k
