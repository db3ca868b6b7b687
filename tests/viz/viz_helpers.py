"""Helpers for the picture tests: models and graphs to draw, and small readers for the outputs
(DOT, HTML tag balance, PNG pixels) written from scratch, since pydot and Pillow are not here.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from importlib import resources

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import dtypes, nn
from tracegrad.codegen.emit import FunctionSource
from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation
from tracegrad.ir.core import Node, Phase, Value
from tracegrad.ir.graph import Graph, body_of
from tracegrad.passes.memory import InBuffer, InPlace, MemoryPlan

# --- models and graphs ---------------------------------------------------------------------------


class Block(nn.Module):
    """A pre-LN transformer block: causal masked softmax attention, then a GELU MLP."""

    def __init__(self, d: int, heads: int, ctx: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.act = nn.GELU()
        self.heads = heads
        self.register_buffer("mask", tg.tril(tg.ones(ctx, ctx)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (
            self.qkv(self.ln1(x))
            .reshape(B, T, 3, self.heads, C // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.heads))
        att = att.masked_fill(self.mask[:T, :T] == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(self.act(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, blocks: int, vocab: int = 65, d: int = 32, heads: int = 2, ctx: int = 16):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.Sequential(*[Block(d, heads, ctx) for _ in range(blocks)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx):
        T = idx.shape[1]
        # NOTE: the Embedding tables are indexed directly: F.embedding's range check reads the
        # indices' data, which a traced tensor does not have (TypeError while tracing).
        x = self.emb.weight[idx] + self.pos.weight[tg.arange(T)]
        return self.head(self.ln(self.blocks(x)))


def value(name: str, spec: str) -> Value:
    dtype, dims = re.fullmatch(r"(\w+)\[([\d,]*)\]", spec).groups()
    shape = tuple(int(d) for d in dims.split(",") if d)
    return Value(name, TensorType(shape, dtypes.from_name(dtype)))


def fused_view() -> tuple[str, Graph, list]:
    """permute, matmul, then a fused add+relu kernel, then an in-place neg, with the memory
    plan of its generated function: the product and the kernel in buffers 0 and 1, the neg
    written over the kernel's result (so in buffer 1 too). Returns the title, the graph and
    the ``generated`` argument of the viz functions."""
    where = SourceLocation("model.py", 7, "y = (x @ w.T + b).relu()")
    types = {"x": "f32[4,3]", "fc.weight": "f32[2,3]", "fc.bias": "f32[2]", "1": "f32[3,2]",
             "2": "f32[4,2]", "4": "f32[4,2]", "5": "f32[4,2]", "p": "f32[4,2]", "q": "f32[2]",
             "a": "f32[4,2]", "s": "f32[4,2]"}  # fmt: skip
    v = {name: value(name, spec) for name, spec in types.items()}
    body = Graph(
        [v["p"], v["q"]],
        [Node("add", [v["p"], v["q"]], [v["a"]], {}, where), Node("relu", [v["a"]], [v["s"]])],
        [v["s"]],
    )
    nodes = [
        Node("permute", [v["fc.weight"]], [v["1"]], {"dims": (1, 0)}, where),
        Node("matmul", [v["x"], v["1"]], [v["2"]], {}, where),
        Node(
            "fused",
            [v["2"], v["fc.bias"]],
            [v["4"]],
            {"body": body, "kind": "elementwise add relu"},
            where,
        ),
        Node("neg", [v["4"]], [v["5"]], {}, where, phase=Phase.BACKWARD, grad_of="relu"),
    ]
    graph = Graph([v["x"], v["fc.weight"], v["fc.bias"]], nodes, [v["5"]])
    placements = {v["2"]: InBuffer(0), v["4"]: InBuffer(1), v["5"]: InPlace(0)}
    plan = MemoryPlan.of(graph, placements, [((4, 2), "float32")] * 2)
    return "fused", graph, [(FunctionSource("forward", [], [], [], {}, plan=plan), graph)]


def leaf_ids(views) -> list[str]:
    """The id of every graph input and non-fused IR node, fused members included."""
    ids = []
    for i, (_, graph) in enumerate(views):
        ids += [f"g{i}_{v.name}" for v in graph.inputs]
        ids += _node_ids(graph.nodes, f"g{i}_", fused_too=False)
    return ids


def all_node_ids(views) -> list[str]:
    """``leaf_ids`` plus the ids of the fused nodes themselves."""
    ids = []
    for i, (_, graph) in enumerate(views):
        ids += [f"g{i}_{v.name}" for v in graph.inputs]
        ids += _node_ids(graph.nodes, f"g{i}_", fused_too=True)
    return ids


def _node_ids(nodes, prefix: str, fused_too: bool) -> list[str]:
    ids = []
    for node in nodes:
        own = prefix + node.outputs[0].name
        if node.op == "fused":
            ids += [own] * fused_too
            ids += _node_ids(body_of(node).nodes, own + "/", fused_too)
        else:
            ids.append(own)
    return ids


def data_edges(views) -> set[tuple[str, str]]:
    """(producer id, consumer id) for graphs without fused nodes, from the IR directly."""
    edges = set()
    for i, (_, graph) in enumerate(views):
        producer = {id(v): f"g{i}_{v.name}" for v in graph.inputs}
        for node in graph.nodes:
            me = f"g{i}_{node.outputs[0].name}"
            edges |= {(producer[id(v)], me) for v in node.inputs}
            producer.update({id(v): me for v in node.outputs})
    return edges


# --- reading DOT ---------------------------------------------------------------------------------

_DOT_TOKEN = re.compile(r'\s+|//[^\n]*|"(?:\\.|[^"\\])*"|->|[{}\[\];=,]|[\w.]+')
_KEYWORDS = {"graph", "node", "edge", "subgraph", "digraph"}


def dot_tokens(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _DOT_TOKEN.match(text, pos)
        assert match, f"DOT: cannot read {text[pos : pos + 40]!r}"
        token = match.group()
        pos = match.end()
        if not token.isspace() and not token.startswith("//"):
            tokens.append(token)
    return tokens


def _unquote(token: str) -> str:
    return token[1:-1].replace('\\"', '"').replace("\\\\", "\\") if token[0] == '"' else token


def _starts_node_statement(tokens: list[str], i: int) -> bool:
    """An ID followed by attributes, not a keyword and not the head of an edge."""
    followed = tokens[i + 1 : i + 2] == ["["]
    return followed and tokens[i] not in _KEYWORDS and tokens[i - 1] != "->"


def parse_dot(text: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(node statements, edges, cluster names) of a digraph; asserts the braces balance."""
    tokens = dot_tokens(text)
    assert tokens[:3] == ["digraph", "tracegrad", "{"] and tokens[-1] == "}"
    nodes, edges, clusters, depth, brackets = [], [], [], 0, 0
    for i, token in enumerate(tokens):
        if token in "{}":
            depth += 1 if token == "{" else -1
            assert depth >= 0 and (depth > 0 or i == len(tokens) - 1)
        elif token in "[]":
            brackets += 1 if token == "[" else -1
        elif brackets == 0 and token == "->":
            edges.append((_unquote(tokens[i - 1]), _unquote(tokens[i + 1])))
        elif brackets == 0 and token == "subgraph":
            clusters.append(_unquote(tokens[i + 1]))
        elif brackets == 0 and _starts_node_statement(tokens, i):
            nodes.append(_unquote(token))
    assert depth == 0 and brackets == 0
    return nodes, edges, clusters


# --- reading HTML ---------------------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}  # fmt: skip


class TagBalance(HTMLParser):
    """Records tags that close out of order or never close."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


# --- reading PNG ---------------------------------------------------------------------------------


def read_png(path) -> np.ndarray:
    """The RGB pixels, (height, width, 3) uint8, of an 8-bit RGB, RGBA or palette PNG,
    decoded by hand."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks: dict[bytes, bytes] = {}
    pos = 8
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks[kind] = chunks.get(kind, b"") + data[pos + 8 : pos + 8 + size]
        pos += 12 + size
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and colour in (2, 3, 6) and interlace == 0, "unexpected PNG format"
    bpp = {2: 3, 3: 1, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    rows, previous = [], np.zeros(width * bpp, np.uint8)
    for filtered in raw:
        previous = _unfilter(int(filtered[0]), filtered[1:], previous, bpp)
        rows.append(previous)
    pixels = np.stack(rows).reshape(height, width, bpp)
    if colour == 3:
        return np.frombuffer(chunks[b"PLTE"], np.uint8).reshape(-1, 3)[pixels[..., 0]]
    return pixels[..., :3]


def _unfilter(kind: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one row's PNG filter (0 none, 1 sub, 2 up, 3 average, 4 Paeth); uint8 sums wrap
    around as the format's arithmetic does."""
    if kind == 0:
        return row.copy()
    if kind == 1:
        return np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
    if kind == 2:
        return row + prev
    out, above = bytearray(row.tobytes()), prev.tobytes()  # (each byte needs the one before)
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        b = above[i]
        if kind == 3:
            out[i] = (out[i] + ((a + b) >> 1)) & 255
            continue
        c = above[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.frombuffer(bytes(out), np.uint8)


def pixel_counts(pixels: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> dict[bytes, int]:
    """How often each RGB colour occurs in the rectangle [x0, x1) x [y0, y1)."""
    colours, counts = np.unique(pixels[y0:y1, x0:x1].reshape(-1, 3), axis=0, return_counts=True)
    return {colour.tobytes(): int(n) for colour, n in zip(colours, counts, strict=True)}


class Twice:
    """Stands in for a user's autograd.Function in a custom node (only its name is shown)."""


def odd_graph() -> Graph:
    """Names and source text that need escaping in every format, a custom node with two
    outputs read by one consumer, an unused input and a lone constant."""
    where = SourceLocation('C:\\odd "dir"\\model.py', 3, "y = f(x) < 1 & z > 2  # {{ '%' }}")
    x, unused = value('x<&>"', "f64[2]"), value("unused", "i64[]")
    a, b, c = value("a", "f64[2]"), value("b", "f64[2]"), value("c", "f64[2]")
    k = value("k", "f32[]")
    custom = Node("custom", [x, x], [a, b], {"fn": Twice, "args": ("s", 'it\'s "q"\n\\')}, where)
    nodes = [
        custom,
        Node("add", [a, b], [c], {}, where),
        Node("constant", [], [k], {"value": np.array(float("-inf"), np.float32)}),
    ]
    return Graph([x, unused], nodes, [c, k])


# --- in a browser --------------------------------------------------------------------------------

# The smallest zoom a drawing opens at (page.js): smaller, it opens at this zoom instead
READABLE = float(
    re.search(
        r"var READABLE = ([\d.]+);",
        resources.files("tracegrad.viz").joinpath("templates/page.js").read_text(encoding="utf-8"),
    ).group(1)
)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)})")
    return found


def run_browser(binary, page, tmp_path, *flags, window=(1200, 800)) -> subprocess.CompletedProcess:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={window[0]},{window[1]}",
        "--enable-logging=stderr", "--v=0", *flags, page,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "Uncaught" not in result.stderr, result.stderr
    return result
