"""``tg.linalg``: linear algebra with ``torch.linalg``'s names and signatures: ``norm``,
``vector_norm``, ``matrix_norm`` and ``svdvals`` (written in ``tracegrad/tensor/norms.py``)."""

from tracegrad.tensor.norms import matrix_norm, norm, svdvals, vector_norm

__all__ = ["matrix_norm", "norm", "svdvals", "vector_norm"]
