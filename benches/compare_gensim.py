#!/usr/bin/env python3
"""paramserv's word2vec against gensim on the same corpus, machine and hyper-parameters.

Skip-gram with negative sampling as gensim's `Word2Vec(sg=1, negative=5, window=5,
vector_size=100, min_count=5, sample=1e-3, epochs=5, alpha=0.025)`, run N times per
configuration, the configurations alternating (the start rotates every round), so that load from
other work on a shared machine spreads over all of them:

  gensim       gensim, workers=2 (sentences in memory, vocabulary built before timing)
  ours         `paramserv word2vec --workers 2 --servers 1` (in-process cluster, raw f32 pushes)
  ours-tcp     a coordinator, 1 server and 2 worker processes over loopback TCP
  ours-topk    `ours` with `--codec 'ef(topk:0.01)'`

Both sides count words/s the same way: corpus words as read (before min-count and subsampling)
x epochs / training seconds. For gensim, the seconds of `train()` only, vocabulary built before;
for us the `words_per_s` of the `--json` report (first step to last barrier, reading each worker's
share of the corpus included). Quality: WordSim-353 Spearman (gensim `evaluate_word_pairs`, ours
`--eval-similarity`, both case-insensitive over the whole vocabulary) and analogy accuracy on
questions-words.txt (gensim `evaluate_word_analogies(restrict_vocab=30000)`, ours
`--eval-analogy`), with both files from gensim's test data.

Each run is one JSON line (stdout, or --jsonl FILE); then a summary table, medians and ranges per
configuration, and the targets checked. Run it with a python that has gensim 4.x (from PyPI:
`python3 -m venv /tmp/venv-gensim && /tmp/venv-gensim/bin/pip install gensim`):

    benches/word2vec_corpus.sh /tmp/kjv_wordnet.txt
    cargo build --release
    /path/to/venv/bin/python benches/compare_gensim.py --corpus /tmp/kjv_wordnet.txt --runs 3 \\
        --jsonl runs.jsonl | tee summary.txt
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = ("gensim", "ours", "ours-tcp", "ours-topk")
TOPK = "ef(topk:0.01)"
WORKERS = 2
# The hyper-parameters of the comparison, as gensim names them.
HYPER = {
    "sg": 1,
    "negative": 5,
    "window": 5,
    "vector_size": 100,
    "min_count": 5,
    "sample": 1e-3,
    "epochs": 5,
    "alpha": 0.025,
    "min_alpha": 0.0001,
}
ANALOGY_RESTRICT = 30000

# Targets of the issue.
TARGET_SPEED = 1.0  # ours in-process words/s >= gensim's
TARGET_SPEARMAN_GAP = 0.02  # ours Spearman >= gensim's - 0.02
TARGET_TCP_SPEED = 0.7  # ours over TCP words/s >= 0.7 x gensim's
TARGET_TOPK_SAVING = 20.0  # ef(topk:0.01) pushes >= 20x fewer bytes than raw
TARGET_TOPK_SPEARMAN = 0.03  # ... with Spearman within 0.03 of raw


def die(msg, code=2):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def require_gensim():
    try:
        import gensim  # noqa: F401
        import numpy  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as e:
        die(
            f"gensim is not importable by {sys.executable} ({e}). This benchmark compares against gensim 4.x: "
            "install it (`python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gensim`) and run the script "
            "with that python (`/tmp/venv/bin/python benches/compare_gensim.py ...`)."
        )
    return gensim


# --- gensim, in a child process per run (a fresh interpreter, as each of our runs is) ------------


def gensim_child(spec):
    """Trains and scores one gensim model; prints one JSON object."""
    from gensim.models import Word2Vec
    from gensim.models.word2vec import FAST_VERSION, LineSentence

    # LineSentence splits on whitespace and cuts sentences at 10,000 words, as our reader does.
    sentences = list(LineSentence(spec["corpus"]))
    h = spec["hyper"]
    model = Word2Vec(
        sg=h["sg"],
        negative=h["negative"],
        window=h["window"],
        vector_size=h["vector_size"],
        min_count=h["min_count"],
        sample=h["sample"],
        epochs=h["epochs"],
        alpha=h["alpha"],
        min_alpha=h["min_alpha"],
        workers=spec["workers"],
        seed=spec["seed"],
    )
    t = time.perf_counter()
    model.build_vocab(sentences)
    vocab_s = time.perf_counter() - t
    t = time.perf_counter()
    model.train(sentences, total_examples=model.corpus_count, epochs=h["epochs"])
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    pearson, spearman, oov = model.wv.evaluate_word_pairs(spec["wordsim"])
    score, sections = model.wv.evaluate_word_analogies(spec["questions"], restrict_vocab=ANALOGY_RESTRICT)
    eval_s = time.perf_counter() - t
    total = sections[-1]  # gensim's last section is the total
    attempted = len(total["correct"]) + len(total["incorrect"])
    words = model.corpus_total_words
    out = {
        "words_per_s": words * h["epochs"] / train_s,
        "seconds": train_s,
        "vocab_seconds": vocab_s,
        "eval_seconds": eval_s,
        "vocab_size": len(model.wv),
        "corpus_words": words,
        "similarity_spearman": float(spearman[0]),
        "similarity_pearson": float(pearson[0]),
        "similarity_coverage": 1.0 - float(oov) / 100.0,
        "analogy_accuracy": float(score),
        "analogy_coverage": attempted / spec["questions_total"],
        "fast_version": FAST_VERSION,
    }
    print(json.dumps(out))


def run_gensim(args, seed):
    spec = {
        "corpus": args.corpus,
        "hyper": HYPER,
        "workers": WORKERS,
        "seed": seed,
        "wordsim": args.wordsim,
        "questions": args.questions,
        "questions_total": args.questions_total,
    }
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--gensim-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=args.timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if out.returncode != 0:
        die(f"the gensim run failed ({out.returncode}):\n{out.stderr[-3000:]}", 1)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- ours ----------------------------------------------------------------------------------------


def job_flags(args, seed):
    h = HYPER
    return [
        "--corpus", args.corpus,
        "--dim", str(h["vector_size"]),
        "--window", str(h["window"]),
        "--negative", str(h["negative"]),
        "--min-count", str(h["min_count"]),
        "--sample", str(h["sample"]),
        "--epochs", str(h["epochs"]),
        "--alpha", str(h["alpha"]),
        "--min-alpha", str(h["min_alpha"]),
        "--seed", str(seed),
        "--eval-similarity", args.wordsim,
        "--eval-analogy", args.questions,
    ]  # fmt: skip


def clean_env():
    """Our environment without PS_* variables, which would change the job."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PS_")}


def ours_figures(report):
    """The figures of a `--json` report that the comparison uses."""
    keys = (
        "words_per_s", "seconds", "vocab_size", "corpus_words", "final_loss", "losses", "bytes_sent",
        "bytes_received", "similarity_spearman", "similarity_coverage", "analogy_accuracy", "analogy_coverage",
    )  # fmt: skip
    out = {k: report.get(k) for k in keys}
    out["codecs"] = [
        {k: t[k] for k in ("table", "codec", "push_raw_bytes", "push_wire_bytes", "push_ratio")}
        for t in report.get("codecs", [])
    ]
    return out


def run_ours(args, seed, codec=None):
    cmd = [args.paramserv, "word2vec", "--workers", str(WORKERS), "--servers", "1", "--json"]
    cmd += job_flags(args, seed)
    if codec:
        cmd += ["--codec", codec]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=clean_env())
    if out.returncode != 0:
        die(f"`{' '.join(cmd)}` failed ({out.returncode}):\n{out.stderr[-3000:]}", 1)
    return ours_figures(json.loads(out.stdout))


def run_ours_tcp(args, seed):
    """A coordinator, one server and two worker processes on loopback; returns worker 0's figures."""
    env = clean_env()
    procs = []
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(4)]
    try:
        coord = subprocess.Popen(
            [args.paramserv, "coordinator", "--app", "word2vec", "--listen", "127.0.0.1:0"]
            + ["--servers", "1", "--workers", str(WORKERS)]
            + job_flags(args, seed),
            stdout=subprocess.PIPE,
            stderr=logs[0],
            text=True,
            env=env,
        )
        procs.append(coord)
        first = coord.stdout.readline().strip()
        prefix = "coordinator listening on "
        if not first.startswith(prefix):
            coord.wait(timeout=args.timeout)
            logs[0].seek(0)
            die(f"the coordinator printed {first!r}, not its address:\n{logs[0].read()[-3000:]}", 1)
        addr = first[len(prefix):]
        connect = ["--coordinator", addr, "--join-timeout", "120s"]
        server = subprocess.Popen(
            [args.paramserv, "server", *connect, "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=logs[1],
            env=env,
        )
        procs.append(server)
        workers = [
            subprocess.Popen(
                [args.paramserv, "worker", *connect, "--json"], stdout=subprocess.PIPE, stderr=logs[2 + i], text=True,
                env=env,
            )
            for i in range(WORKERS)
        ]
        procs += workers
        deadline = time.monotonic() + args.timeout
        reports = []
        for i, w in enumerate(workers):
            stdout, _ = w.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if w.returncode != 0:
                logs[2 + i].seek(0)
                die(f"worker process {i} failed ({w.returncode}):\n{logs[2 + i].read()[-3000:]}", 1)
            reports.append(json.loads(stdout))
        for p, name in ((server, "server"), (coord, "coordinator")):
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                die(f"the {name} exited with {p.returncode}", 1)
        coord.stdout.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    figures = ours_figures(reports[0])
    # The job's figures are reduced over workers: both processes report the same ones.
    figures["workers_agree"] = all(
        r["final_loss"] == reports[0]["final_loss"] and r["bytes_sent"] == reports[0]["bytes_sent"] for r in reports
    )
    figures["words_per_s_by_process"] = [r["words_per_s"] for r in reports]
    return figures


# --- the comparison ------------------------------------------------------------------------------


def describe_machine(args, gensim):
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    from gensim.models.word2vec import FAST_VERSION

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirty = sh(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "paramserv": f"{args.paramserv} ({sh([args.paramserv, '--version'])})",
        "commit": sh(["git", "-C", repo, "rev-parse", "--short", "HEAD"]) + (" + uncommitted changes" if dirty else ""),
        "gensim": f"{gensim.__version__} (FAST_VERSION {FAST_VERSION}), python {platform.python_version()}",
        "corpus": f"{args.corpus} ({os.path.getsize(args.corpus)} bytes, sha256 {sha256(args.corpus)[:16]})",
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def median_range(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}, {fmt(max(xs))}]"


def pushed(r):
    """Values' bytes pushed, raw f32 and on the wire, summed over tables."""
    return sum(t["push_raw_bytes"] for t in r["codecs"]), sum(t["push_wire_bytes"] for t in r["codecs"])


def summarize(runs, out):
    by = {c: [r for r in runs if r["config"] == c] for c in CONFIGS}
    med = lambda c, k: statistics.median([r[k] for r in by[c] if r.get(k) is not None])  # noqa: E731
    n = len(by["gensim"])
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"\nSummary: median [min, max] of {n} run(s) per configuration")
    p(f"{'configuration':<12} {'words/s':>40} {'WordSim-353 Spearman':>26} {'coverage':>9} {'analogy acc.':>26} "
      f"{'train s':>8}")  # fmt: skip
    for c in CONFIGS:
        rs = by[c]
        p(
            f"{c:<12} {median_range([r['words_per_s'] for r in rs], lambda x: f'{x:,.0f}'):>40} "
            f"{median_range([r['similarity_spearman'] for r in rs], lambda x: f'{x:.4f}'):>26} "
            f"{statistics.median(r['similarity_coverage'] for r in rs):>9.3f} "
            f"{median_range([r['analogy_accuracy'] for r in rs], lambda x: f'{x:.4f}'):>26} "
            f"{statistics.median(r['seconds'] for r in rs):>8.1f}"
        )
    # (c) the codec against raw, round by round (each round has both).
    raw = {r["round"]: r for r in by["ours"]}
    saving_sent, saving_values, spearman_diff = [], [], []
    for r in by["ours-topk"]:
        base = raw[r["round"]]
        saving_sent.append(base["bytes_sent"] / r["bytes_sent"])
        saving_values.append(pushed(base)[0] / pushed(r)[1])
        spearman_diff.append(r["similarity_spearman"] - base["similarity_spearman"])
    p(f"\n{TOPK} vs raw (ours, in-process), per round:")
    p(f"  bytes workers sent (keys, headers, coded values; bytes_sent): raw {med('ours', 'bytes_sent'):,.0f}, "
      f"{TOPK} {med('ours-topk', 'bytes_sent'):,.0f}: "
      f"{median_range(saving_sent, lambda x: f'{x:.1f}x')} fewer")  # fmt: skip
    for t_raw, t_topk in zip(by["ours"][0]["codecs"], by["ours-topk"][0]["codecs"]):
        p(f"  table {t_topk['table']}: pushed values {t_raw['push_wire_bytes']:,} B raw, "
          f"{t_topk['push_wire_bytes']:,} B coded ({t_topk['push_ratio']:.1f}x; first round)")  # fmt: skip
    p(f"  pushed values, all tables (push_raw_bytes / push_wire_bytes): "
      f"{median_range(saving_values, lambda x: f'{x:.1f}x')} fewer")  # fmt: skip
    p(f"  Spearman, {TOPK} minus raw: {median_range(spearman_diff, lambda x: f'{x:+.4f}')}")
    tcp_agree = all(r.get("workers_agree") for r in by["ours-tcp"])
    p(f"  (ours-tcp: both worker processes reported the same job figures in every run: {tcp_agree})")

    g_speed, g_sp = med("gensim", "words_per_s"), med("gensim", "similarity_spearman")
    checks = [
        (
            f"ours in-process words/s >= {TARGET_SPEED:g}x gensim's (2 workers)",
            f"{med('ours', 'words_per_s'):,.0f} vs {g_speed:,.0f} ({med('ours', 'words_per_s') / g_speed:.2f}x)",
            med("ours", "words_per_s") >= TARGET_SPEED * g_speed,
        ),
        (
            f"ours Spearman no more than {TARGET_SPEARMAN_GAP} below gensim's",
            f"{med('ours', 'similarity_spearman'):.4f} vs {g_sp:.4f} "
            f"({med('ours', 'similarity_spearman') - g_sp:+.4f})",
            med("ours", "similarity_spearman") >= g_sp - TARGET_SPEARMAN_GAP,
        ),
        (
            f"ours over TCP (2 worker processes) words/s >= {TARGET_TCP_SPEED}x gensim's",
            f"{med('ours-tcp', 'words_per_s'):,.0f} vs {g_speed:,.0f} "
            f"({med('ours-tcp', 'words_per_s') / g_speed:.2f}x)",
            med("ours-tcp", "words_per_s") >= TARGET_TCP_SPEED * g_speed,
        ),
        (
            f"{TOPK}: >= {TARGET_TOPK_SAVING:g}x fewer bytes sent than raw",
            f"{statistics.median(saving_sent):.1f}x (pushed values alone {statistics.median(saving_values):.1f}x)",
            statistics.median(saving_sent) >= TARGET_TOPK_SAVING,
        ),
        (
            f"{TOPK}: Spearman within {TARGET_TOPK_SPEARMAN} of raw",
            f"{statistics.median(spearman_diff):+.4f} (median of per-round differences)",
            abs(statistics.median(spearman_diff)) <= TARGET_TOPK_SPEARMAN,
        ),
    ]
    p("\nTargets")
    p(f"{'target':<62} {'measured (medians)':<44} result")
    for what, measured, ok in checks:
        p(f"{what:<62} {measured:<44} {'met' if ok else 'NOT MET'}")
    return all(ok for _, _, ok in checks)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--gensim-child":
        gensim_child(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="plain-text corpus, one sentence per line")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument(
        "--paramserv",
        default=os.path.join(repo, "target/release/paramserv"),
        help="our binary (default: target/release/paramserv; build it with `cargo build --release`)",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration")
    ap.add_argument("--jsonl", help="write one JSON line per run here instead of to stdout")
    ap.add_argument("--epochs", type=int, default=HYPER["epochs"], help="passes (5 in the comparison)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    ap.add_argument("--wordsim", help="similarity file (default: gensim's wordsim353.tsv)")
    ap.add_argument("--questions", help="analogy file (default: gensim's questions-words.txt)")
    args = ap.parse_args()
    if args.runs < 1:
        die("--runs must be at least 1")
    gensim = require_gensim()
    from gensim.test.utils import datapath

    HYPER["epochs"] = args.epochs
    args.wordsim = os.path.abspath(args.wordsim or datapath("wordsim353.tsv"))
    args.questions = os.path.abspath(args.questions or datapath("questions-words.txt"))
    args.corpus = os.path.abspath(args.corpus)
    for path in (args.corpus, args.wordsim, args.questions):
        if not os.path.isfile(path):
            die(f"{path}: no such file")
    if not (os.path.isfile(args.paramserv) and os.access(args.paramserv, os.X_OK)):
        die(f"{args.paramserv}: no such executable (run `cargo build --release`, or pass --paramserv PATH)")
    args.paramserv = os.path.abspath(args.paramserv)
    with open(args.questions, encoding="utf8") as f:
        args.questions_total = sum(1 for line in f if line.strip() and not line.startswith(":"))

    machine = describe_machine(args, gensim)
    jsonl = open(args.jsonl, "w") if args.jsonl else sys.stdout
    print("word2vec: paramserv vs gensim (skip-gram, negative sampling)")
    print(f"  command: {shlex.join([sys.executable, *sys.argv])}")
    for k, v in machine.items():
        print(f"  {k}: {v}")
    print(f"  hyper-parameters: {', '.join(f'{k}={v}' for k, v in HYPER.items())}, workers={WORKERS}, 1 server")
    print(f"  {args.runs} run(s) per configuration, alternating: {', '.join(CONFIGS)} (start rotates per round)")
    sys.stdout.flush()

    runners = {
        "gensim": lambda seed: run_gensim(args, seed),
        "ours": lambda seed: run_ours(args, seed),
        "ours-tcp": lambda seed: run_ours_tcp(args, seed),
        "ours-topk": lambda seed: run_ours(args, seed, TOPK),
    }
    runs = []
    for rnd in range(args.runs):
        order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[: rnd % len(CONFIGS)]
        seed = 1 + rnd
        for config in order:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            r = runners[config](seed)
            r.update(config=config, round=rnd, seed=seed, wall_seconds=time.perf_counter() - started, load_before=load)
            runs.append(r)
            print(json.dumps(r, sort_keys=True), file=jsonl, flush=True)
            print(
                f"round {rnd} {config:<10} {r['words_per_s']:>12,.0f} words/s  train {r['seconds']:6.1f} s  "
                f"wall {r['wall_seconds']:6.1f} s  Spearman {r['similarity_spearman']:.4f}  "
                f"analogy {r['analogy_accuracy']:.4f}  (load before {load:.2f})",
                file=sys.stderr if jsonl is sys.stdout else sys.stdout,
                flush=True,
            )
    ok = summarize(runs, sys.stdout)
    if jsonl is not sys.stdout:
        jsonl.close()
    print("\nevery target met" if ok else "\nsome targets NOT met (see above)")


if __name__ == "__main__":
    main()
