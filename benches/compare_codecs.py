#!/usr/bin/env python3
"""Side-by-side encode speed: paramserv's gradient codecs against PyTorch (CPU) and the zstd CLI.

What it measures
----------------
On one gradient of N standard-normal f32 values (default 25,000,000 = 100 MB) it times the
ENCODE of each codec two ways, on one core each:

* ours: ``paramserv bench codecs --floats N --codec SPEC ... --runs R --json`` (the binary is
  ``target/release/paramserv`` unless ``--paramserv PATH``);
* a Python baseline doing the same job with PyTorch ops (``torch.set_num_threads(1)``) or numpy,
  best of R runs after one warm-up run.

Speeds are GB/s of f32 input: N * 4 bytes / seconds, with GB = 10^9 bytes.

The baselines (each row of the table names the one it used):

=====================  ======================================================================
codec                  baseline(s)
=====================  ======================================================================
fp16                   torch ``g.half()``; torch ``h.copy_(g)`` into a reused fp16 tensor (ours
                       reuses its output buffer too, so this one pays no allocation/page faults)
topk:0.01              torch ``torch.topk(g.abs(), k, sorted=False)`` + gather ``g[idx]``;
                       numpy ``np.argpartition(|g|, n-k)[n-k:]`` + gather
topk:0.01,approx       the two above, and torch DGC-style threshold from a 1% random sample
                       (as GRACE's dgc.py: ``topk`` of the sample, ``|g| >= thr``,
                       ``torch.where``, gather; without its re-adjust loop)
signsgd                sign bits of ``g >= 0`` packed 8 per byte + mean |g| per block of 4096:
                       torch (bool -> int64 words, one multiply packs 8 bytes into one, MSB
                       first like np.packbits) and numpy (``np.packbits``)
onebit                 the same packed signs + per block of 4096 the means of the elements
                       >= 0 and < 0 (Seide et al.)
qsgd                   GRACE's bucketed QSGD (grace_dl/dist/compressor/qsgd.py) with s=16,
                       bucket 512: L2 norm per bucket, |g|/norm*s, floor, ``torch.rand`` for
                       stochastic rounding, times sign, to int8 (one byte a value, no packing)
terngrad               scale = max|g| per bucket of 4096, keep sign(g) where
                       ``torch.rand * scale < |g|``, to int8 (GRACE's TernGrad without its
                       2.5-sigma clipping; one byte a value, no packing)
sketchml               numpy ``np.quantile(g, 256 levels)`` + ``np.searchsorted`` to a uint8
                       bucket index (SketchML's quantile quantizer; no sketch, no bucket means);
                       torch ``torch.quantile`` of a 2^20-element random sample +
                       ``torch.bucketize`` (torch.quantile takes at most 16M elements)
=====================  ======================================================================

Each baseline does at most what our codec does (no bit-packing for QSGD/TernGrad, no sketch for
SketchML), so the comparison is strict. Targets: every codec but fp16 at least 5x the baseline;
fp16 matches it (>= 0.9x by default, ~10 GB/s on the dev machine). Without torch the torch rows
are skipped and numpy stand-ins run instead, labelled "numpy fallback" (``--no-torch`` forces
this).

zstd section: the gradient's raw little-endian f32 bytes go to a temp file; the zstd CLI's
in-memory benchmark ``zstd -b3 -i<secs> FILE`` (its MB/s are MB of *input* per second with
MB = 10^6 bytes: benchzstd.c divides srcSize * 1e9 / ns by MB_UNIT = 1000000), the end-to-end
``zstd -3 -c FILE > /dev/null`` (best of R), and ours with ``--input FILE --codec 'raw|zstd:3'``
(plus ``raw|zstd:3,shuffle`` for information) are printed side by side.

Usage
-----
Install PyTorch outside the project, build ours, run from the repository root::

    python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch numpy
    cargo build --release
    /work/venv-torch/bin/python benches/compare_codecs.py --runs 3 --repeat 3
    /work/venv-torch/bin/python benches/compare_codecs.py --json      # table rows as JSON lines
    /work/venv-torch/bin/python benches/compare_codecs.py --baselines-only --floats 1000000  # no binary

``--repeat K`` repeats the whole measurement K times (baselines and ours interleaved) and reports
the median of the K best-of-R values with its spread (max-min)/median, which on a shared 2-core
machine says how far to trust a row. ``--codec SPEC`` (repeatable) restricts the codecs,
``--no-zstd`` skips the zstd section. Ours runs once per codec, so a codec that fails (e.g. still
``todo!()``) shows as FAILED with its error and the rest go on. Exit status: 0 when the tables
were printed (targets met or not), 2 for bad arguments or a missing binary/tool.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One core, like ours: before numpy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

try:
    import numpy as np  # noqa: E402
except ImportError:
    sys.exit("compare_codecs.py: numpy is missing in this Python; run it with the venv that has "
             "torch and numpy, e.g. /work/venv-torch/bin/python benches/compare_codecs.py")

REPO = Path(__file__).resolve().parent.parent
GB = 1e9
ZSTD_MB = 1e6  # zstd's benchmark MB (MB_UNIT in programs/benchzstd.h)

DEFAULT_CODECS = [
    "fp16",
    "topk:0.01",
    "topk:0.01,approx",
    "onebit",
    "signsgd",
    "qsgd",
    "terngrad",
    "sketchml",
    "raw|zstd:3",
    "raw|zstd:3,shuffle",
]
ZSTD_SPECS = ("raw|zstd:3", "raw|zstd:3,shuffle")

TOPK_RATIO = 0.01
SIGN_BLOCK = 4096
QSGD_LEVELS = 16
QSGD_BUCKET = 512
TERNGRAD_BUCKET = 4096
SKETCH_BUCKETS = 256
SKETCH_SAMPLE = 1 << 20


class UsageError(Exception):
    """Bad arguments or a missing tool: exit 2 with the message."""


# --------------------------------------------------------------------------------------------
# Baselines. Each is (label, lib, fn) with lib in {"torch", "numpy", "numpy fallback"}; fn takes
# the gradient (a torch tensor for torch, a numpy array otherwise) and returns its encoding.
# --------------------------------------------------------------------------------------------


def _split_np(g: np.ndarray, block: int):
    """Whole blocks as a 2-D view, and the tail (possibly empty) as a 1 x len view."""
    nb = g.size // block
    parts = [g[: nb * block].reshape(nb, block)]
    if g.size % block:
        parts.append(g[nb * block :].reshape(1, -1))
    return parts


def np_fp16(g):
    return g.astype(np.float16)


def np_topk_argpartition(g):
    n = g.size
    k = max(1, round(TOPK_RATIO * n))
    idx = np.argpartition(np.abs(g), n - k)[n - k :]
    return idx, g[idx]


def np_topk_sampled(g, rng=np.random.default_rng(1)):
    n = g.size
    m = max(1, int(n * 0.01))
    sample = np.abs(g[rng.integers(0, n, m)])
    k = max(1, int(m * TOPK_RATIO))
    thr = np.partition(sample, m - k)[m - k]
    idx = np.flatnonzero(np.abs(g) >= thr)
    return idx, g[idx]


def np_signsgd(g):
    bits = np.packbits(g >= 0)
    scales = [np.abs(p).mean(axis=1, dtype=np.float32) for p in _split_np(g, SIGN_BLOCK)]
    return bits, scales


def np_onebit(g):
    mask = g >= 0
    bits = np.packbits(mask)
    means = []
    for p, m in zip(_split_np(g, SIGN_BLOCK), _split_np(mask, SIGN_BLOCK)):
        s_all = p.sum(axis=1, dtype=np.float32)
        s_pos = np.maximum(p, 0).sum(axis=1, dtype=np.float32)
        c_pos = m.sum(axis=1)
        c_neg = p.shape[1] - c_pos
        means.append((s_pos / np.maximum(c_pos, 1), (s_all - s_pos) / np.maximum(c_neg, 1)))
    return bits, means


def np_qsgd(g, rng=np.random.default_rng(2)):
    out = []
    for p in _split_np(g, QSGD_BUCKET):
        norm = np.sqrt(np.einsum("ij,ij->i", p, p))
        level = np.abs(p) * (QSGD_LEVELS / np.maximum(norm, 1e-30))[:, None].astype(np.float32)
        low = np.floor(level)
        up = rng.random(p.shape, dtype=np.float32) < (level - low)
        q = ((low + up) * np.sign(p)).astype(np.int8)
        out.append((q, norm))
    return out


def np_terngrad(g, rng=np.random.default_rng(3)):
    out = []
    for p in _split_np(g, TERNGRAD_BUCKET):
        a = np.abs(p)
        scale = a.max(axis=1)
        keep = rng.random(p.shape, dtype=np.float32) * scale[:, None] < a
        out.append(((np.sign(p) * keep).astype(np.int8), scale))
    return out


_SKETCH_LEVELS = np.linspace(0.0, 1.0, SKETCH_BUCKETS + 1)[1:-1]


def np_sketch_quantile(g):
    splits = np.quantile(g, _SKETCH_LEVELS).astype(np.float32)
    idx = np.searchsorted(splits, g, side="right").astype(np.uint8)
    return splits, idx


def make_torch_baselines(torch):
    """The torch baselines, built once torch is imported."""

    def split(g, block):
        nb = g.numel() // block
        parts = [g[: nb * block].view(nb, block)]
        if g.numel() % block:
            parts.append(g[nb * block :].view(1, -1))
        return parts

    # Multiplying a little-endian word of eight 0/1 bytes b0..b7 by 0x8040201008040201 puts
    # b0<<7 | b1<<6 | ... | b7 in the top byte (MSB first, as np.packbits); as a signed int64.
    magic = 0x8040201008040201 - (1 << 64)

    def pack_bits(mask):
        """A bool tensor packed 8 elements per byte, MSB first (equal to np.packbits)."""
        n = mask.numel()
        if n % 8:
            mask = torch.cat([mask, mask.new_zeros(8 - n % 8)])
        words = mask.view(torch.uint8).view(torch.int64)
        return ((words * magic) >> 56).to(torch.uint8)  # wraps mod 2^64; low 8 bits = top byte

    def fp16(g):
        return g.half()

    fp16_out = {}

    def fp16_into(g):
        """The same conversion into a reused output tensor (no allocation, no page faults)."""
        out = fp16_out.get(g.numel())
        if out is None:
            out = fp16_out[g.numel()] = torch.empty(g.numel(), dtype=torch.float16)
        return out.copy_(g)

    def topk(g):
        k = max(1, round(TOPK_RATIO * g.numel()))
        _, idx = torch.topk(g.abs(), k, sorted=False)
        return idx, g[idx]

    def topk_sampled(g):
        n = g.numel()
        m = max(1, int(n * 0.01))
        sample = g[torch.randint(0, n, (m,))].abs()
        k = max(1, int(m * TOPK_RATIO))
        thr = torch.topk(sample, k, sorted=False).values.min()
        (idx,) = torch.where(g.abs() >= thr)
        return idx, g[idx]

    def signsgd(g):
        bits = pack_bits(g >= 0)
        return bits, [p.abs().mean(dim=1) for p in split(g, SIGN_BLOCK)]

    def onebit(g):
        mask = g >= 0
        bits = pack_bits(mask)
        means = []
        for p, m in zip(split(g, SIGN_BLOCK), split(mask, SIGN_BLOCK)):
            s_all = p.sum(dim=1)
            s_pos = p.clamp(min=0).sum(dim=1)
            c_pos = m.sum(dim=1)
            c_neg = p.shape[1] - c_pos
            means.append((s_pos / c_pos.clamp(min=1), (s_all - s_pos) / c_neg.clamp(min=1)))
        return bits, means

    def qsgd(g):
        out = []
        for p in split(g, QSGD_BUCKET):
            norm = p.pow(2).sum(dim=1).sqrt()
            level = p.abs() * (QSGD_LEVELS / norm.clamp(min=1e-30)).unsqueeze(1)
            low = level.floor()
            up = torch.rand_like(p) < (level - low)
            out.append((((low + up) * p.sign()).to(torch.int8), norm))
        return out

    def terngrad(g):
        out = []
        for p in split(g, TERNGRAD_BUCKET):
            a = p.abs()
            scale = a.amax(dim=1)
            keep = torch.rand_like(p) * scale.unsqueeze(1) < a
            out.append(((p.sign() * keep).to(torch.int8), scale))
        return out

    levels = torch.linspace(0.0, 1.0, SKETCH_BUCKETS + 1)[1:-1]

    def sketch_bucketize(g):
        sample = g[torch.randint(0, g.numel(), (min(SKETCH_SAMPLE, g.numel()),))]
        splits = torch.quantile(sample, levels)
        return splits, torch.bucketize(g, splits, right=True).to(torch.uint8)

    return {
        "fp16": fp16,
        "fp16_into": fp16_into,
        "topk": topk,
        "topk_sampled": topk_sampled,
        "signsgd": signsgd,
        "onebit": onebit,
        "qsgd": qsgd,
        "terngrad": terngrad,
        "sketch": sketch_bucketize,
        "pack_bits": pack_bits,
    }


def baselines_for(spec: str, t: dict | None):
    """[(label, lib, fn)] for a codec spec; torch rows only when t (the torch baselines) is given."""
    rows = []

    def add_torch(label, key):
        if t is not None:
            rows.append((label, "torch", t[key]))

    if spec == "fp16":
        add_torch("g.half()", "fp16")
        add_torch("h.copy_(g), h reused fp16 tensor", "fp16_into")
        rows.append(("g.astype(float16)", "numpy fallback", np_fp16))
    elif spec in ("topk:0.01", "topk:0.01,approx"):
        add_torch("topk(|g|,k,sorted=False)+gather", "topk")
        rows.append(("argpartition(|g|)+gather", "numpy", np_topk_argpartition))
        if spec.endswith("approx"):
            add_torch("DGC 1% sample thr+where+gather", "topk_sampled")
            rows.append(("DGC 1% sample thr+flatnonzero", "numpy fallback", np_topk_sampled))
    elif spec == "signsgd":
        add_torch("(g>=0) int64-mul pack+blk mean|g|", "signsgd")
        rows.append(("packbits(g>=0)+blk mean|g|", "numpy", np_signsgd))
    elif spec == "onebit":
        add_torch("(g>=0) int64-mul pack+blk +/- means", "onebit")
        rows.append(("packbits(g>=0)+blk +/- means", "numpy", np_onebit))
    elif spec == "qsgd":
        add_torch("GRACE qsgd s=16 b=512 rand->int8", "qsgd")
        rows.append(("qsgd s=16 b=512 random->int8", "numpy fallback", np_qsgd))
    elif spec == "terngrad":
        add_torch("max|g|/4096, rand ternary->int8", "terngrad")
        rows.append(("max|g|/4096, random ternary->int8", "numpy fallback", np_terngrad))
    elif spec == "sketchml":
        rows.append(("np.quantile 256 + searchsorted", "numpy", np_sketch_quantile))
        add_torch("quantile(2^20 sample)+bucketize", "sketch")
    return rows


def best_seconds(fn, arg, runs: int) -> float:
    fn(arg)  # warm-up
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(arg)
        dt = time.perf_counter() - t0
        del out
        best = min(best, dt)
    return best


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------


def resolve_binary(path: str) -> Path:
    p = Path(path)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO / p]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise UsageError(
        f"paramserv binary not found at {path!r} (looked in {', '.join(str(c) for c in candidates)}).\n"
        f"Build it with `cargo build --release` in {REPO}, or pass --paramserv PATH."
    )


def check_ours(binary: Path) -> None:
    """Fail early, before the baselines run, if the binary has no `bench codecs`."""
    proc = subprocess.run([str(binary), "bench", "codecs", "--help"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(
            f"{binary} has no `bench codecs` ({proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.returncode}).\n"
            f"Rebuild it with `cargo build --release` in {REPO}, or pass --paramserv PATH."
        )


def run_ours(binary: Path, floats: int, spec: str, runs: int, input_file: str | None = None):
    """(json object or None, error text or None, command) of `paramserv bench codecs` for one spec.

    One process per codec, so a codec that fails (e.g. still `todo!()`) costs only its own row.
    """
    cmd = [str(binary), "bench", "codecs", "--floats", str(floats), "--runs", str(runs), "--json"]
    if input_file:
        cmd += ["--input", input_file]
    cmd += ["--codec", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_BACKTRACE": "0"})
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("error")), lines[-1] if lines else "")
        return None, f"exit {proc.returncode}: {why}", cmd
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    rows = [r for r in rows if "codec" in r]
    if len(rows) != 1:
        return None, f"expected one JSON row, got {len(rows)}: {proc.stdout.strip()[:500]}", cmd
    return rows[0], None, cmd


# --------------------------------------------------------------------------------------------
# zstd CLI
# --------------------------------------------------------------------------------------------

_ZSTD_BENCH = re.compile(
    r"(\d+)\s*->\s*(\d+)\s*\(x\s*([\d.]+)\)\s*,\s*([\d.]+)\s*MB/s\s*,\s*([\d.]+)\s*MB/s"
)


def zstd_bench(zstd: str, level: int, secs: int, path: str):
    """zstd's in-memory benchmark: (compress GB/s of input, decompress GB/s, bytes_in, bytes_out)."""
    cmd = [zstd, f"-b{level}", f"-i{secs}", path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = (proc.stdout + "\n" + proc.stderr).replace("\r", "\n")
    matches = _ZSTD_BENCH.findall(text)
    if proc.returncode != 0 or not matches:
        raise RuntimeError(f"`{' '.join(cmd)}` failed or printed no result:\n{text.strip()[-2000:]}")
    b_in, b_out, _ratio, c_mbs, d_mbs = matches[-1]
    return float(c_mbs) * ZSTD_MB / GB, float(d_mbs) * ZSTD_MB / GB, int(b_in), int(b_out), cmd


def zstd_end_to_end(zstd: str, level: int, path: str, runs: int, extra: list[str]):
    """Best wall time of `zstd -L -c FILE > /dev/null`, as GB/s of input."""
    cmd = [zstd, f"-{level}", "-q", "-c", *extra, path]
    size = os.path.getsize(path)
    best = math.inf
    for i in range(runs + 1):  # the first is a warm-up (page cache)
        t0 = time.perf_counter()
        with open(os.devnull, "wb") as devnull:
            subprocess.run(cmd, stdout=devnull, check=True)
        dt = time.perf_counter() - t0
        if i:
            best = min(best, dt)
    return size / GB / best, cmd


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def summarize(samples: list[float]):
    med = statistics.median(samples)
    spread = (max(samples) - min(samples)) / med if med > 0 and len(samples) > 1 else 0.0
    return med, spread


def fmt_gbs(v, spread):
    if v is None:
        return "-"
    s = f"{v:.3f}" if v < 10 else f"{v:.2f}"
    return s + (f" ±{spread * 100:.0f}%" if spread else "")


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{str(c):<{w}}" for c, w in zip(r, widths)))


def versions(torch, zstd):
    v = {"python": platform.python_version(), "numpy": np.__version__}
    v["torch"] = torch.__version__ if torch is not None else None
    if zstd:
        out = subprocess.run([zstd, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v(\d+\.\d+\.\d+)", out)
        v["zstd"] = m.group(1) if m else out.strip()
    try:
        v["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        v["cpu"] = platform.processor()
    v["nproc"] = os.cpu_count()
    return v


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Compare paramserv's codec encode speed with PyTorch/numpy and the zstd CLI.",
        epilog="See the module docstring (or benches/README-compare.md) for what each baseline does.",
    )
    ap.add_argument("--floats", type=int, default=25_000_000, help="gradient length (default 25M)")
    ap.add_argument("--codec", action="append", dest="codecs", metavar="SPEC",
                    help="codec spec to compare (repeatable; default: all ten)")
    ap.add_argument("--runs", type=int, default=3, help="best of R timed runs after a warm-up (default 3)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="repeat everything K times; report median and spread of the K bests")
    ap.add_argument("--paramserv", default="target/release/paramserv",
                    help="our binary (default target/release/paramserv, relative to cwd or repo root)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the Python-side gradient")
    ap.add_argument("--target", type=float, default=5.0, help="required speedup over the baseline (default 5)")
    ap.add_argument("--fp16-tolerance", type=float, default=0.9,
                    help="fp16 'matches' when ours >= this x the baseline (default 0.9)")
    ap.add_argument("--no-torch", action="store_true", help="do not import torch; run numpy fallbacks")
    ap.add_argument("--numpy-fallbacks", action="store_true",
                    help="also run the numpy stand-ins of torch rows when torch is present")
    ap.add_argument("--baselines-only", action="store_true", help="do not run ours (no binary needed)")
    ap.add_argument("--no-zstd", action="store_true", help="skip the zstd CLI section")
    ap.add_argument("--zstd", default="zstd", help="zstd CLI (default: zstd on PATH)")
    ap.add_argument("--zstd-secs", type=int, default=3, help="zstd -i<secs> for its benchmark (default 3)")
    ap.add_argument("--json", action="store_true", help="print the table rows as JSON lines instead")
    a = ap.parse_args(argv)
    if a.floats < 8 or a.runs < 1 or a.repeat < 1 or a.zstd_secs < 1:
        ap.error("--floats >= 8, --runs >= 1, --repeat >= 1, --zstd-secs >= 1")
    a.codecs = a.codecs or list(DEFAULT_CODECS)
    return a


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    a = parse_args(argv)

    torch = None
    if not a.no_torch:
        try:
            import torch  # noqa: F811
        except ImportError:
            log("note: torch is not installed in this Python: skipping the torch rows; numpy "
                "stand-ins run instead, labelled 'numpy fallback' (install it with "
                "`python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch numpy`)")
    tb = None
    if torch is not None:
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        torch.manual_seed(a.seed)
        tb = make_torch_baselines(torch)

    binary = None if a.baselines_only else resolve_binary(a.paramserv)
    if binary is not None:
        check_ours(binary)
    zstd = None
    if not a.no_zstd and any(s in ZSTD_SPECS for s in a.codecs):
        zstd = shutil.which(a.zstd)
        if zstd is None:
            raise UsageError(f"zstd CLI {a.zstd!r} not found on PATH (apt-get install zstd, or --no-zstd)")

    env = versions(torch, zstd)
    log(f"versions: {json.dumps(env)}")

    n = a.floats
    log(f"gradient: {n} standard-normal f32 ({n * 4 / 1e6:.0f} MB), seed {a.seed}")
    g_np = np.random.default_rng(a.seed).standard_normal(n, dtype=np.float32)
    g_np = g_np.astype("<f4", copy=False)
    g_t = torch.from_numpy(g_np) if torch is not None else None

    if tb is not None:  # self-check of the torch bit-packer against np.packbits
        chk = g_np[:1003] >= 0
        assert np.array_equal(tb["pack_bits"](torch.from_numpy(chk)).numpy(), np.packbits(chk))

    lossy = [s for s in a.codecs if s not in ZSTD_SPECS]
    plan = []  # (spec, label, lib, fn)
    for s in lossy:
        rows = baselines_for(s, tb)
        if not rows:
            log(f"note: no baseline for {s!r}; ours only")
        for label, lib, fn in rows:
            if lib == "numpy fallback" and tb is not None and not a.numpy_fallbacks:
                continue
            plan.append((s, label, lib, fn))
        if not rows:
            plan.append((s, None, None, None))

    base_samples = {i: [] for i in range(len(plan))}
    ours_samples: dict[str, list[dict]] = {s: [] for s in lossy}
    ours_err: dict[str, str] = {}
    ours_cmd = None
    for rep in range(a.repeat):
        for i, (s, label, lib, fn) in enumerate(plan):
            if fn is None:
                continue
            arg = g_t if lib == "torch" else g_np
            secs = best_seconds(fn, arg, a.runs)
            base_samples[i].append(n * 4 / GB / secs)
            log(f"[{rep + 1}/{a.repeat}] {s:<18} {lib:<14} {label:<36} {n * 4 / GB / secs:8.3f} GB/s")
        for s in lossy if binary is not None else []:
            if s in ours_err:
                continue
            res, err, cmd = run_ours(binary, n, s, a.runs)
            ours_cmd = cmd[:-1] + ["SPEC"]
            if err:
                ours_err[s] = err
                log(f"[{rep + 1}/{a.repeat}] {s:<18} ours FAILED: {err}")
            else:
                ours_samples[s].append(res)
                log(f"[{rep + 1}/{a.repeat}] {s:<18} ours           encode {res['encode_gb_s']:8.3f} GB/s")

    table = []
    for i, (s, label, lib, fn) in enumerate(plan):
        ours = ours_samples[s]
        o_med, o_spread = summarize([o["encode_gb_s"] for o in ours]) if ours else (None, 0.0)
        b_med, b_spread = summarize(base_samples[i]) if base_samples[i] else (None, 0.0)
        need = a.fp16_tolerance if s == "fp16" else a.target
        speedup = o_med / b_med if o_med is not None and b_med else None
        row = {
            "section": "codecs",
            "codec": s,
            "baseline_lib": lib,
            "baseline": label,
            "ours_encode_gb_s": o_med,
            "ours_spread": o_spread,
            "baseline_gb_s": b_med,
            "baseline_spread": b_spread,
            "speedup": speedup,
            "target": f">={need:g}x" + (" (match)" if s == "fp16" else ""),
            "met": None if speedup is None else speedup >= need,
            "ours_samples": [o["encode_gb_s"] for o in ours],
            "baseline_samples": base_samples[i],
            "ours_error": ours_err.get(s),
        }
        if ours:
            last = ours[-1]
            for k in ("decode_gb_s", "bytes_in", "bytes_out", "ratio", "rel_l2_error"):
                row["ours_" + k] = last.get(k)
        table.append(row)

    # zstd section
    zrows = []
    if zstd is not None:
        zspecs = [s for s in a.codecs if s in ZSTD_SPECS]
        with tempfile.TemporaryDirectory(prefix="compare-codecs-") as tmp:
            path = os.path.join(tmp, "gradient.f32")
            g_np.tofile(path)
            log(f"zstd: wrote {os.path.getsize(path)} bytes of little-endian f32 to {path}")
            zb = {"c": [], "d": []}
            ze2e, ze2e_st = [], []
            zo = {s: [] for s in zspecs}
            zo_err = {}
            zo_cmd = None
            for rep in range(a.repeat):
                c, d, b_in, b_out, zb_cmd = zstd_bench(zstd, 3, a.zstd_secs, path)
                zb["c"].append(c)
                zb["d"].append(d)
                e2e, e2e_cmd = zstd_end_to_end(zstd, 3, path, a.runs, [])
                ze2e.append(e2e)
                e2e1, e2e1_cmd = zstd_end_to_end(zstd, 3, path, a.runs, ["--single-thread"])
                ze2e_st.append(e2e1)
                log(f"[{rep + 1}/{a.repeat}] zstd -b3: {c:.3f} GB/s compress, {d:.3f} decompress; "
                    f"zstd -3 -c: {e2e:.3f} GB/s, --single-thread {e2e1:.3f} GB/s")
                for s in zspecs if binary is not None else []:
                    if s in zo_err:
                        continue
                    res, err, cmd = run_ours(binary, n, s, a.runs, input_file=path)
                    zo_cmd = cmd[:-1] + ["'SPEC'"]
                    if err:
                        zo_err[s] = err
                        log(f"[{rep + 1}/{a.repeat}] {s:<18} ours --input FAILED: {err}")
                    else:
                        zo[s].append(res)
                        log(f"[{rep + 1}/{a.repeat}] {s:<18} ours --input    encode {res['encode_gb_s']:8.3f} GB/s")
            zbench, zbench_sp = summarize(zb["c"])
            refs = [
                ("zstd -b3 (in-memory bench)", zb["c"], b_in / max(b_out, 1), " ".join(zb_cmd)),
                ("zstd -3 -c FILE >/dev/null", ze2e, None, " ".join(e2e_cmd)),
                ("zstd -3 --single-thread -c", ze2e_st, None, " ".join(e2e1_cmd)),
            ]
            for label, samples, ratio, cmd in refs:
                v, sp = summarize(samples)
                zrows.append({"section": "zstd", "who": label, "encode_gb_s": v, "spread": sp,
                              "ratio": ratio, "samples": samples, "command": cmd.replace(path, "FILE")})
            for s in zspecs:
                if s in zo_err:
                    zrows.append({"section": "zstd", "who": f"ours {s}", "encode_gb_s": None,
                                  "spread": 0.0, "ratio": None, "error": zo_err[s],
                                  "command": " ".join(zo_cmd).replace(path, "FILE").replace("SPEC", s)})
                if not zo[s]:
                    continue
                med, sp = summarize([o["encode_gb_s"] for o in zo[s]])
                last = zo[s][-1]
                zrows.append({
                    "section": "zstd", "who": f"ours {s}", "encode_gb_s": med, "spread": sp,
                    "ratio": last.get("ratio"), "samples": [o["encode_gb_s"] for o in zo[s]],
                    "command": " ".join(zo_cmd).replace(path, "FILE").replace("SPEC", s),
                    "vs_zstd_bench": med / zbench if zbench else None,
                    "no_slower_than_zstd_bench": med >= zbench if s == "raw|zstd:3" else None,
                    "ours_decode_gb_s": last.get("decode_gb_s"),
                    "zstd_bench_decode_gb_s": summarize(zb["d"])[0],
                })

    if a.json:
        print(json.dumps({"section": "env", **env, "floats": n, "runs": a.runs, "repeat": a.repeat,
                          "ours_command": " ".join(ours_cmd) if ours_cmd else None}))
        for r in table + zrows:
            print(json.dumps(r))
        return 0

    print(f"\nEncode, GB/s of f32 input ({n} floats, best of {a.runs} after a warm-up"
          + (f", median of {a.repeat} repeats, ±spread" if a.repeat > 1 else "") + "; one thread)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    if ours_cmd:
        print("ours: " + " ".join(ours_cmd))
    print()
    headers = ["codec", "baseline", "ours GB/s", "baseline GB/s", "ours/base", "target", "met"]
    rows = []
    for r in table:
        lib = r["baseline_lib"] or ""
        label = f"{lib}: {r['baseline']}" if r["baseline"] else "(none)"
        rows.append([
            r["codec"], label,
            "FAILED" if r["ours_error"] else fmt_gbs(r["ours_encode_gb_s"], r["ours_spread"]),
            fmt_gbs(r["baseline_gb_s"], r["baseline_spread"]),
            f"{r['speedup']:.1f}x" if r["speedup"] is not None else "-",
            r["target"],
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        ])
    print_table(headers, rows)

    # One line per codec: met against every baseline it was compared with?
    by_codec = {}
    for r in table:
        if r["met"] is not None:
            by_codec.setdefault(r["codec"], []).append(r["met"])
    if by_codec:
        print("\nper codec (against every baseline): "
              + ", ".join(f"{c} {'yes' if all(v) else 'NO'}" for c, v in by_codec.items()))

    failed = {r["codec"]: r["ours_error"] for r in table if r["ours_error"]}
    failed.update({r["who"][5:]: r["error"] for r in zrows if r.get("error")})
    for c, e in failed.items():
        print(f"ours {c} failed: {e}")

    if zrows:
        print(f"\nzstd level 3 on the same {n * 4} raw bytes (GB/s of input; zstd's MB/s are 10^6 B)\n")
        zh = ["who", "encode GB/s", "ratio", "vs zstd -b3", "command"]
        zr = []
        for r in zrows:
            zr.append([
                r["who"], "FAILED" if r.get("error") else fmt_gbs(r["encode_gb_s"], r["spread"]),
                f"{r['ratio']:.4f}" if r.get("ratio") else "-",
                f"{r['vs_zstd_bench']:.2f}x" if r.get("vs_zstd_bench") else "-",
                r["command"],
            ])
        print_table(zh, zr)
        for r in zrows:
            if r.get("no_slower_than_zstd_bench") is not None:
                print(f"\nours raw|zstd:3 no slower than zstd -b3: "
                      f"{'yes' if r['no_slower_than_zstd_bench'] else 'NO'}"
                      f" ({r['encode_gb_s']:.3f} vs {zrows[0]['encode_gb_s']:.3f} GB/s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"compare_codecs.py: {e}", file=sys.stderr)
        sys.exit(2)
