import gzip
import os

import pytest

from keras_transformer.data import read_lines
from keras_transformer.data import read_parallel

def test_plain_and_gzip_read_the_same(tmp_path):
    text = "ein mann fährt .\r\nzwei hunde\n\nletzte zeile ohne umbruch"
    plain = tmp_path / "a.de"
    plain.write_bytes(text.encode("utf-8"))
    packed = tmp_path / "a.de.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    expected = ["ein mann fährt .", "zwei hunde", "", "letzte zeile ohne umbruch"]
    assert read_lines(plain) == expected
    assert read_lines(packed) == expected


def test_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"fine\nalso fine\nbroken \xff byte\n")
    with pytest.raises(ValueError, match=r"bad\.en, line 3: not valid UTF-8"):
        read_lines(bad)
    empty = tmp_path / "empty.en"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.en: the file is empty"):
        read_lines(empty)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match=r"corrupt\.gz: cannot be read"):
        read_lines(corrupt)
    with pytest.raises(FileNotFoundError):
        read_lines(tmp_path / "missing.en")


def test_mismatched_line_counts(tmp_path):
    (tmp_path / "s.en").write_text("a\nb\nc\n")
    (tmp_path / "t.de").write_text("x\ny\n")
    with pytest.raises(ValueError, match=r"s\.en has 3 lines but .*t\.de has 2 lines"):
        read_parallel(tmp_path / "s.en", tmp_path / "t.de")


def test_multi30k_is_aligned(multi30k_dir):
    source, target = read_parallel(
        os.path.join(multi30k_dir, "val.en.gz"), os.path.join(multi30k_dir, "val.de.gz")
    )
    assert len(source) == len(target) == 1014
    assert source[0].startswith("A group of men")
