"""The tracegrad command: each subcommand on a small model file; user mistakes give one line."""

import json
import subprocess
import sys
import textwrap

import pytest

from tracegrad.cli import load_target, main
from tracegrad.compile import compile as compile_model

MODEL_FILE = textwrap.dedent(
    """
    import numpy as np
    import tracegrad as tg
    from tracegrad import nn

    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def scaled_sum(x):
        return (x * 2.0).tanh().sum()

    def branchy(x):
        if x.sum() > 0:
            return x
        return -x

    example_inputs = (np.ones((5, 4), np.float32),)
    """
)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(MODEL_FILE)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dump_text_shows_forward_and_backward(capsys, model_file):
    code, out, _ = run(capsys, "dump", f"{model_file}:model")
    assert code == 0
    assert "# forward (optimized)" in out and "# backward (optimized)" in out
    assert "= matmul" in out and "relu_grad" in out


def test_dump_formats(capsys, model_file):
    code, out, _ = run(capsys, "dump", f"{model_file}:model", "--format", "json")
    assert code == 0 and "forward (optimized)" in json.loads(out)
    code, out, _ = run(capsys, "dump", f"{model_file}:model", "--format", "code")
    assert code == 0 and "def forward(" in out and "def backward(" in out
    code, out, _ = run(capsys, "dump", f"{model_file}:model", "--format", "dot")
    assert code == 0 and "digraph" in out.split("{")[0]


def test_dump_without_passes_keeps_more_nodes(capsys, model_file):
    _, optimized, _ = run(capsys, "dump", f"{model_file}:scaled_sum")
    _, plain, _ = run(capsys, "dump", f"{model_file}:scaled_sum", "--no-passes")

    def nodes(text):  # one line per node (a fused node's body is on its line)
        return sum(line.startswith("  %") for line in text.splitlines())

    assert nodes(plain) >= nodes(optimized)


def test_viz_writes_each_format(capsys, model_file, tmp_path):
    for suffix in (".html", ".svg", ".dot"):
        target = tmp_path / f"graph{suffix}"
        code, out, _ = run(capsys, "viz", f"{model_file}:model", "-o", str(target))
        assert code == 0 and target.exists() and target.stat().st_size > 100
        assert str(target) in out


def test_explain(capsys, model_file):
    code, out, _ = run(capsys, "explain", f"{model_file}:model")
    assert code == 0 and "passes on the" in out and "memory plan" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.py:model", "no such file"),
        ("{file}:nothing", "defines no 'nothing'"),
        ("{file}", "expected FILE.py:NAME"),
        ("{file}:branchy", "control flow"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(capsys, model_file, target, message):
    code, out, err = run(capsys, "dump", target.format(file=model_file))
    assert code != 0 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_example_inputs(capsys, tmp_path):
    path = tmp_path / "bare.py"
    path.write_text("def f(x):\n    return x\n")
    code, _, err = run(capsys, "explain", f"{path}:f")
    assert code == 2 and "example_inputs" in err and err.count("\n") == 1


def test_help_for_each_subcommand():
    for sub in ([], ["dump"], ["viz"], ["explain"], ["demo"]):
        result = subprocess.run(
            [sys.executable, "-m", "tracegrad", *sub, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "usage: tracegrad" in result.stdout


def test_demo_runs_end_to_end_at_reduced_size(tmp_path):
    from tracegrad.demo import run_demo

    summary = run_demo(epochs=3, picture=tmp_path / "demo.html", progress=False)
    accuracy = float(summary.split("test accuracy: ")[1].split("%")[0])
    assert accuracy > 80.0  # three epochs already learn the digits well
    assert (tmp_path / "demo.html").stat().st_size > 1000


def test_bench_runs_the_benchmarks_with_their_own_options(tmp_path):
    """``tracegrad bench ARGS`` is ``python -m benchmarks ARGS`` in the source checkout:
    its help, a small run that writes the table and JSON, and its errors with their status."""

    def bench(*args):
        command = [sys.executable, "-m", "tracegrad", "bench", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)

    helped = bench("--help")
    assert helped.returncode == 0 and "usage: python -m benchmarks" in helped.stdout
    json_path, md_path = tmp_path / "bench.json", tmp_path / "bench.md"
    ran = bench(
        "--quick", "--size", "small", "--workloads", "W1", "--impls", "step,handwritten",
        "-q", "--json", str(json_path), "--markdown", str(md_path),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(json_path.read_text())["workloads"][0]["rows"]
    assert {r["implementation"] for r in rows} == {"step", "handwritten"}
    assert "| W1 | tracegrad whole step |" in md_path.read_text()
    wrong = bench("--rounds", "nope")
    assert wrong.returncode == 2 and "invalid int value: 'nope'" in wrong.stderr


def test_other_commands_still_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--bogus"])
    assert info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_model_file_imports_modules_beside_it(capsys, tmp_path):
    (tmp_path / "layers_beside.py").write_text("WIDTH = 6\n")
    path = tmp_path / "uses_sibling.py"
    path.write_text(MODEL_FILE + "from layers_beside import WIDTH\nwide = nn.Linear(4, WIDTH)\n")
    code, out, err = run(capsys, "dump", f"{path}:wide")
    assert code == 0, err
    assert "f32[5,6]" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["viz", "{file}:model", "-o", "{tmp}/graph.png"], "cannot tell the picture format"),
        (["dump", "{file}:model", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["dump", "{file}:model", "--bogus"], "unrecognized arguments: --bogus"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_bad_flags_and_suffixes_give_one_line_and_status_2(capsys, model_file, tmp_path, argv,
                                                           message):  # fmt: skip
    argv = [a.format(file=model_file, tmp=tmp_path) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's way out
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "graph.png").exists()


def test_unknown_log_name_is_a_one_line_error(capsys, model_file, monkeypatch):
    monkeypatch.setenv("TRACEGRAD_LOGS", "graph,recompile")
    code, out, err = run(capsys, "dump", f"{model_file}:model")
    assert code == 2 and out == ""
    assert "TRACEGRAD_LOGS names no log 'recompile'" in err and err.count("\n") == 1


def test_logs_all_and_timing_of_each_stage(capsys, model_file, monkeypatch):
    monkeypatch.setenv("TRACEGRAD_LOGS", "timing")
    code, _, err = run(capsys, "dump", f"{model_file}:model")
    stages = [line.split("] ")[1].split(":")[0] for line in err.splitlines()]
    assert code == 0 and all(line.startswith("[tracegrad:timing] ") for line in err.splitlines())
    for stage in ("trace", "pass fuse", "autodiff", "codegen forward", "codegen backward"):
        assert stage in stages
    assert any(s.startswith("load ") for s in stages)
    monkeypatch.setenv("TRACEGRAD_LOGS", "all")
    code, _, err = run(capsys, "dump", f"{model_file}:model")
    kinds = {line.split("]")[0] for line in err.splitlines() if line.startswith("[tracegrad:")}
    assert kinds == {f"[tracegrad:{k}" for k in ("graph", "passes", "code", "timing")}


def test_headings_say_which_passes_made_the_graphs(capsys, model_file):
    _, plain, _ = run(capsys, "dump", f"{model_file}:model", "--no-passes")
    assert "# forward (no passes)" in plain and "(optimized)" not in plain
    _, some, _ = run(capsys, "dump", f"{model_file}:model", "--passes", "dce,cse")
    assert "# forward (passes dce,cse)" in some and "(optimized)" not in some
    _, function, _ = run(capsys, "dump", f"{model_file}:scaled_sum")
    assert "# forward (optimized)" in function and "training step" not in function


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    path = tmp_path / "deep.py"  # its dump is larger than a pipe holds
    path.write_text(MODEL_FILE + "deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(150)])\n")
    dump = subprocess.Popen(
        [sys.executable, "-m", "tracegrad", "dump", f"{path}:deep", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    dump.stdout.readline()
    dump.stdout.close()  # as `| head -1` does
    err = dump.stderr.read().decode()
    assert dump.wait() == 0 and err == ""


def test_a_program_is_warned_once_about_an_unknown_log_name(monkeypatch):
    import warnings

    import tracegrad as tg
    from tracegrad import logs

    monkeypatch.setenv("TRACEGRAD_LOGS", "recompiles,graphs")
    monkeypatch.setattr(logs, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = tg.compile(lambda x: x * 2.0)
        compiled(tg.ones(2))
        compiled(tg.ones(3))
    messages = [str(w.message) for w in caught]
    assert messages == ["TRACEGRAD_LOGS names no log graphs: use graph, passes, code, "
                        "recompiles, timing or all"]  # fmt: skip


def test_viz_draws_the_page_cm_visualize_draws(capsys, model_file, tmp_path):
    """One picture for the command and the API: the time line over the passes and the
    backward values labelled with what they are, the same page byte for byte."""
    page = tmp_path / "cli.html"
    code, _, _ = run(capsys, "viz", f"{model_file}:model", "-o", str(page))
    assert code == 0
    model, inputs = load_target(f"{model_file}:model")
    cm = compile_model(model)
    cm(*inputs)
    text = page.read_text(encoding="utf-8")
    assert text == cm.visualize(tmp_path / "api.html").read_text(encoding="utf-8")
    assert 'data-view="passes"' in text and ">grad of 0.weight</text>" in text
    run(capsys, "viz", f"{model_file}:model", "-o", str(page), "--no-passes")
    assert "backward (no passes)" in page.read_text(encoding="utf-8")
