"""Every Python block in README.md and docs/ runs, so a doc example that breaks fails the suite.

The blocks of one file run in order in one namespace, in a fresh working
directory. Two kinds of HTML comment, invisible on a rendered page, let a doc
run at test sizes without showing test code to its reader:

    <!--test
    code run at this point (setup before a block, checks after it)
    -->

    <!--test-replace
    text in the next python block => what the test runs instead
    -->

A replacement whose text is not in the next block fails the test, so a
replacement cannot silently stop applying when a doc changes. Code a hidden
block registers in `cleanup` (a list of callables) runs even when a block fails.
"""

import glob
import os
import re
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = sorted(
    {"README.md", "serving/README.md", "CONTRIBUTING.md"}
    | {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)}
)
# A fence, indented or not (in a list item), with its info string: ```python, ```py, ```sh ...
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
PYTHON = {"python", "py", "python3"}


def doc_blocks(text):
    """[(kind, code, line)] with kind "python" (a fenced block), "hidden" or "replace"."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            indent = fence.group(1)
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
            if end is None:
                raise ValueError(f"line {i + 1}: a ``` block that never closes")
            if fence.group(2).lower() in PYTHON:
                body = [row[len(indent):] if row.startswith(indent) else row for row in lines[i + 1:end]]
                blocks.append(("python", "\n".join(body), i + 2))
            i = end + 1
            continue
        if line.strip().startswith("<!--test"):
            marker = line.strip()
            if marker not in ("<!--test", "<!--test-replace"):
                raise ValueError(f"line {i + 1}: {marker!r}: a hidden block starts with a line of its own, "
                                 "<!--test or <!--test-replace, and ends with a line -->")
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"), None)
            if end is None:
                raise ValueError(f"line {i + 1}: a {marker} comment that never closes with -->")
            kind = "hidden" if marker == "<!--test" else "replace"
            blocks.append((kind, "\n".join(lines[i + 1:end]), i + 2))
            i = end + 1
            continue
        i += 1
    return blocks


def apply_replacements(spec, code, where):
    for rule in filter(str.strip, spec.split("\n")):
        old, sep, new = rule.partition(" => ")
        if not sep:
            raise ValueError(f"{where}: a replacement needs 'old => new', got {rule!r}")
        if old not in code:
            raise AssertionError(f"{where}: {old!r} is not in the next python block any more")
        code = code.replace(old, new)
    return code


def run_doc(path, text, namespace=None):
    namespace = {"__name__": "__doc__", "cleanup": [], **(namespace or {})}
    pending = None
    try:
        for kind, code, line in doc_blocks(text):
            where = f"{path}:{line}"
            if kind == "replace":
                if pending:
                    raise AssertionError(f"{where}: a second test-replace before the python block of {pending[1]}")
                pending = (code, where)
                continue
            if kind == "python" and pending:
                code = apply_replacements(pending[0], code, pending[1])
                pending = None
            exec(compile(textwrap.dedent(code), where, "exec"), namespace)
        if pending:
            raise AssertionError(f"{pending[1]}: a test-replace comment with no python block after it")
    finally:
        for stop in reversed(namespace["cleanup"]):
            stop()


def _with_blocks():
    return [p for p in DOC_FILES if doc_blocks(_read(p))]


def _read(path):
    return open(os.path.join(ROOT, path), encoding="utf-8").read()


# The docs with Python blocks today: a parsing change that found none would otherwise pass them all.
HAVE_PYTHON = ["README.md", "docs/decoding.md", "docs/finetuning.md", "docs/layers.md", "docs/training.md",
               "docs/variants.md", "serving/README.md"]


def test_the_docs_have_python_blocks_to_run():
    have = [p for p in DOC_FILES if any(k == "python" for k, _, _ in doc_blocks(_read(p)))]
    assert sorted(have) == sorted(HAVE_PYTHON), have


def test_the_runner_fails_a_broken_block_and_a_stale_replacement():
    with pytest.raises(NameError):
        run_doc("x.md", "```python\nundefined_name\n```\n")
    with pytest.raises(ValueError, match="a line of its own"):
        run_doc("x.md", "<!--test assert False -->\n")
    with pytest.raises(AssertionError, match="a second test-replace"):
        run_doc("x.md", "<!--test-replace\na => b\n-->\n<!--test-replace\nc => d\n-->\n```python\na\n```\n")
    indented = "1. a step:\n\n   ```py\n   undefined_name\n   ```\n"
    with pytest.raises(NameError):  # an indented ```py block in a list item runs too
        run_doc("x.md", indented)
    with pytest.raises(AssertionError, match="is not in the next python block"):
        run_doc("x.md", "<!--test-replace\nepochs=50 => epochs=1\n-->\n```python\nx = dict(epochs=5)\n```\n")
    ran = []
    with pytest.raises(ZeroDivisionError):
        run_doc("x.md", "<!--test\ncleanup.append(lambda: ran.append(1))\n-->\n```python\n1 / 0\n```\n", {"ran": ran})
    assert ran == [1]


@pytest.mark.parametrize("path", _with_blocks())
def test_doc_python_blocks_run(path, tmp_path, monkeypatch, request):
    text = _read(path)
    namespace = {"ROOT": ROOT}
    if "MULTI30K_DIR" in text:  # a hidden block reads Multi30k: skip or fail as the data tests do
        namespace["MULTI30K_DIR"] = request.getfixturevalue("multi30k_dir")
    monkeypatch.chdir(tmp_path)
    run_doc(path, text, namespace)


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading):
    """GitHub's anchor of a heading: lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a "# comment" in a code block is no heading
    return {_anchor(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def broken_links(path, text):
    """The relative links of `text` (a doc at `path`) whose file or heading does not exist."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), file or os.path.basename(path)))
        if not os.path.exists(resolved):
            broken.append(f"{target}: no file {os.path.relpath(resolved, ROOT)}")
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, ROOT)}")
    return broken


@pytest.mark.parametrize("path", DOC_FILES)
def test_every_relative_link_and_anchor_exists(path):
    broken = broken_links(path, _read(path))
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_missing_file_and_a_missing_heading():
    text = "[a](layers.md#masks) [b](layers.md#no-such-part) [c](nowhere.md) [d](https://example.org/x.md)"
    assert broken_links("docs/x.md", text) == [
        "layers.md#no-such-part: no heading #no-such-part in docs/layers.md", "nowhere.md: no file docs/nowhere.md",
    ]
