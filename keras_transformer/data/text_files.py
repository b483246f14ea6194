"""Readers for parallel text: one sentence per line, plain or gzip."""

import gzip
import os
from typing import List, Tuple

GZIP_MAGIC = b"\x1f\x8b"


def _open_bytes(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def read_lines(path: str) -> List[str]:
    """The lines of a UTF-8 text file (plain or gzip), without line endings.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, or a line is not valid UTF-8 (the
            message names the file and the 1-based line number).
    """
    path = os.fspath(path)
    lines = []
    try:
        with _open_bytes(path) as f:
            for number, raw in enumerate(f, start=1):
                try:
                    lines.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{path}, line {number}: not valid UTF-8 ({e.reason} at byte {e.start})"
                    ) from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot be read as text or gzip ({e})") from None
    if not lines:
        raise ValueError(f"{path}: the file is empty; expected one sentence per line")
    return lines


def read_parallel(source_path: str, target_path: str) -> Tuple[List[str], List[str]]:
    """Aligned (source, target) sentence lists from two files.

    Raises:
        ValueError: as `read_lines`, or when the files have different line
            counts (the message names both files and counts).
    """
    source, target = read_lines(source_path), read_lines(target_path)
    if len(source) != len(target):
        raise ValueError(
            f"Parallel files are not aligned: {source_path} has {len(source)} lines but "
            f"{target_path} has {len(target)} lines (first unmatched line: {min(len(source), len(target)) + 1})"
        )
    return source, target
