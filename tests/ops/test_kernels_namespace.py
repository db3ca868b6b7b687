"""The kernels generated code calls: every ``rt.<name>`` an op's templates emit is a kernel
declared with ``@kernel`` next to its op, reachable through ``tracegrad.ops.kernels`` (what
generated code imports as ``rt``), and the source an export copies defines every kernel in a
Python where tracegrad cannot be imported."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from tracegrad.codegen.export import kernels_source
from tracegrad.ops import OPS, kernels
from tracegrad.ops.runtime import KERNELS


def test_every_kernel_an_op_template_calls_is_declared():
    called = {
        name
        for op in OPS.values()
        for template in (op.emit, op.out)
        if template
        for name in re.findall(r"\brt\.(\w+)", template)
    }
    missing = called - set(KERNELS)
    assert not missing, f"templates call rt.<name> of functions not marked @kernel: {missing}"


def test_generated_code_reaches_every_kernel_under_its_name():
    assert all(getattr(kernels, name) is fn for name, fn in KERNELS.items())


def test_the_exported_kernels_define_every_kernel_without_tracegrad():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["tracegrad"] = None
        import numpy as np
        namespace = {"np": np}
        exec(sys.stdin.read(), namespace)
        print(" ".join(sorted(namespace["KERNELS"])))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=kernels_source(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == sorted(KERNELS)
