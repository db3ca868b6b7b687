"""Each example script runs end to end at its --quick size and prints its key figures."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = ["mlp_digits", "cnn_digits", "char_transformer", "custom_function", "resnet_digits"]
NAMES += ["char_lstm"]


def run_example(name: str, *args: str) -> str:
    # the scripts pin BLAS to one thread themselves, as a user running them gets it
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def figure(pattern: str, text: str) -> float:
    """The number captured by ``pattern``; fails naming the pattern if it is not printed."""
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in output:\n{text}"
    return float(found.group(1))


def test_examples_directory_has_the_scripts_and_the_text():
    for name in NAMES:
        assert (EXAMPLES / f"{name}.py").is_file()
    assert (EXAMPLES / "data" / "gettysburg_sonnets.txt").stat().st_size > 2000
    assert "public domain" in (EXAMPLES / "data" / "README.md").read_text()


def test_mlp_digits(tmp_path):
    picture = tmp_path / "step.html"
    out = run_example("mlp_digits", "--picture", str(picture))
    first = figure(r"^epoch\s+1\s+loss (\d+\.\d+)", out)
    last = figure(r"^epoch\s+5\s+loss (\d+\.\d+)", out)
    assert last < first
    assert figure(r"^test accuracy: (\d+\.\d+)%", out) >= 90.0  # about 93% after 5 epochs
    figure(r"^train time: (\d+\.\d+) s", out)
    # the compile report summary: passes with node counts, the generated step, recompiles
    figure(r"^\s+cse\s+(\d+) ->", out)
    assert figure(r"^\s+step: (\d+) nodes", out) > 0
    figure(r"^recompiles: (\d+)", out)
    assert picture.is_file() and "<html" in picture.read_text().lower()


def test_cnn_digits():
    out = run_example("cnn_digits")
    assert figure(r"^test accuracy: (\d+\.\d+)%", out) >= 90.0  # about 97% after 3 epochs
    assert figure(r"^time per epoch: (\d+\.\d+) ms", out) > 0
    assert figure(r"^forward: (\d+) nodes", out) > 0
    assert figure(r"^backward: (\d+) nodes", out) > 0
    assert "compiled module" in out


def test_char_transformer():
    out = run_example("char_transformer")
    first = figure(r"^step\s+1\s+loss (\d+\.\d+)", out)
    last = figure(r"^step\s+30\s+loss (\d+\.\d+)", out)
    assert last < first - 0.5  # about 4.2 -> 2.5 in 30 steps
    assert figure(r"compiled step: (\d+) nodes", out) > 0
    figure(r"\((\d+\.\d+) ms/step\)", out)
    sample = out.split("greedy sample:\n", 1)[1]
    assert sample.startswith("Four score") and len(sample.rstrip("\n")) >= len("Four score") + 20


def test_custom_function():
    out = run_example("custom_function")
    assert figure(r"largest \|eager - compiled\| loss difference: (\S+)", out) <= 1e-5
    assert "eager and compiled user gradients agree: True" in out
    assert "user's backward differs from the derived one: True" in out
    assert figure(r"derived from sign\(\) without the Function:\s+(\d+\.\d+)", out) == 0.0
    assert figure(r"straight-through backward, compiled:\s+(\d+\.\d+)", out) > 0.0
    assert figure(r"^compiled backward: (\d+) nodes", out) > 0


@pytest.mark.parametrize("name", NAMES)
def test_help(name):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--quick" in done.stdout


def test_resnet_digits():
    out = run_example("resnet_digits")
    first = figure(r"^epoch\s+1\s+loss (\d+\.\d+)", out)
    last = figure(r"^epoch\s+4\s+loss (\d+\.\d+)", out)
    assert last < first / 4  # about 1.65 -> 0.05 in 4 epochs
    assert figure(r"^test accuracy: (\d+\.\d+)%", out) >= 90.0  # about 98% after 4 epochs
    assert "compiled whole step" in out
    assert figure(r"^recompiles: (\d+)", out) <= 1


def test_char_lstm():
    out = run_example("char_lstm")
    first = figure(r"^first loss (\d+\.\d+)", out)
    last = figure(r"last 10 steps' mean (\d+\.\d+)", out)
    assert last < first - 1.0  # about 3.97 -> 2.2 in 60 steps
    assert figure(r"^compiled step: (\d+) nodes", out) > 0
    figure(r"\((\d+\.\d+) ms/step\)", out)
    sample = out.split("sample:\n", 1)[1].rstrip("\n")
    assert sample.startswith("Four score") and len(sample) == len("Four score") + 40
