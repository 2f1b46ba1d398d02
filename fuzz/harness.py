"""Coverage-guided fuzzing of the input readers with atheris (libFuzzer for Python).

    pip install -e ".[fuzz]"
    nice -n 10 python fuzz/harness.py TARGET [libFuzzer flags]    # TARGET: data | recipe | checkpoint | bundle
    # e.g. 5 minutes, fixed seed, seeds from the kept corpus, new finds into a scratch dir:
    nice -n 10 python fuzz/harness.py bundle -max_total_time=300 -seed=1 -timeout=10 -rss_limit_mb=3072 \\
        /tmp/fuzz-bundle tests/fuzz/corpus/bundle fuzz/seeds/bundle

Each input runs through the same check as the hypothesis tests and the corpus replay
(tests/fuzz/fuzz_targets.py); anything but acceptance or a one-line InputError is a crash,
which libFuzzer saves as crash-<sha1>. A crash that is a bug gets a fix, and the input goes to
tests/fuzz/corpus/<target>/ (named as test_fuzz_corpus.py describes), where CI replays it.

Input encoding per target (libFuzzer mutates raw bytes):
- data: first byte % 7 picks the suffix (.csv .tsv .jsonl .json .conll .txt .iob), the rest is the file;
- recipe: the bytes are the recipe file;
- checkpoint: first byte even: the rest is config.json, odd: the rest is model.safetensors;
- bundle: the bytes are the .mcpkg file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

with atheris.instrument_imports(include=["mcompress", "yaml"]):
    import yaml  # noqa: F401 - load_recipe imports it lazily; imported here so that it is instrumented
    from fuzz_targets import check_bundle_file, check_checkpoint_dir, check_data_file, check_recipe_file  # noqa: F401
    from test_fuzz_corpus import replay

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".conll", ".txt", ".iob")


def decode(target: str, data: bytes) -> tuple[str, bytes]:
    """(corpus file name, content) for one libFuzzer input."""
    if target == "data":
        return ("input" + SUFFIXES[data[0] % len(SUFFIXES)], data[1:]) if data else ("input.csv", b"")
    if target == "checkpoint":
        if not data:
            return "input.config.json", b""
        return ("input.config.json" if data[0] % 2 == 0 else "input.safetensors"), data[1:]
    return {"recipe": "input.yaml", "bundle": "input.mcpkg"}[target], data


def main() -> None:
    target = sys.argv.pop(1)

    def one_input(data: bytes) -> None:
        name, content = decode(target, data)
        with tempfile.TemporaryDirectory() as folder:
            replay(target, name, content, Path(folder))

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
