//! The word2vec job as a user meets it: `paramserv word2vec` on real text (a few books of the KJV
//! Bible from the `bible` program of Debian's bible-kjv, when installed), the vectors it writes in
//! both formats read back by us and by gensim, bad input refused with a reason and exit code 2,
//! the multi-process job over loopback TCP, and BSP and ASP on the synthetic corpus.
//!
//! Every test is small enough for a debug build and bounded in time. Tests that need the `bible`
//! program or a python with gensim print why they skip and pass without them (CI installs
//! bible-kjv; gensim is found as in `word2vec_eval`: `$PARAMSERV_PYTHON`, else `python3` if it
//! can import gensim).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use paramserv::apps::run_app;
use paramserv::apps::word2vec::corpus::{Corpus, SyntheticCorpus};
use paramserv::apps::word2vec::eval;
use paramserv::apps::word2vec::train::{self, Word2vecConfig};
use paramserv::apps::word2vec::vectors::{self, Embeddings, Format};
use paramserv::cluster::job::{AppConfig, JobConfig};
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::consistency::Consistency;
use paramserv::proto::partition::Partitioning;
use paramserv::transport::Transport;
use serde_json::Value;

use crate::util::{KillOnDrop, PYTHON_LIMIT, bounded, first_line, gensim_python, paramserv, wait_output};

/// Time allowed for one `paramserv` process (a debug build trains Genesis in a few seconds).
const LIMIT: Duration = Duration::from_secs(120);
/// The books of the real-text tests: Genesis, 1,533 verses, about 38,000 words.
const GENESIS: &str = "gen1:1-gen50:26";

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("word2vec").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs `paramserv args` to its end within [`LIMIT`].
fn run(args: &[&str]) -> Output {
    let child = paramserv().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_output(child, LIMIT, args[0])
}

/// Runs `paramserv args`, which must succeed, and returns its `--json` report.
fn run_json(args: &[&str]) -> Value {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed ({}): {stderr}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{args:?}: stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// `word2vec --corpus CORPUS`, then `flags` (split at spaces), then `more` (paths, kept whole).
fn word2vec_args<'a>(corpus: &'a Path, flags: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["word2vec", "--corpus", path_str(corpus)];
    args.extend(flags.split_whitespace());
    args.extend_from_slice(more);
    args
}

fn read_vectors(path: &Path, format: Format) -> Embeddings {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    vectors::read(std::io::BufReader::new(file), format).unwrap()
}

fn f64_at(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number '{key}' in {v}"))
}

// --- real text ---------------------------------------------------------------------------------

/// The verses of `range` as the corpus script makes them: reference removed, lowercased,
/// punctuation other than apostrophes turned into spaces, one verse a line. `None` when the `bible` program is not installed.
fn bible(range: &str) -> Option<String> {
    let child = Command::new("bible")
        .args(["-f", range])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else { return None };
    let out = wait_output(child, LIMIT, "bible");
    assert!(out.status.success(), "bible -f {range} failed");
    let text = String::from_utf8(out.stdout).expect("the KJV text is ASCII");
    let mut corpus = String::new();
    for line in text.lines() {
        // "Ge1:1 In the beginning ...": the reference is the first token.
        let verse = line.split_once(' ').map_or("", |(_, v)| v);
        let cleaned: String = verse
            .chars()
            .map(|c| if c.is_alphanumeric() || c == '\'' { c.to_ascii_lowercase() } else { ' ' })
            .collect();
        corpus.push_str(&cleaned.split_whitespace().collect::<Vec<_>>().join(" "));
        corpus.push('\n');
    }
    assert!(text.lines().count() > 1000, "bible -f {range} printed {} lines", text.lines().count());
    Some(corpus)
}

/// What the real-text tests share: Genesis trained once by the CLI, vectors in both formats.
struct Genesis {
    report: Value,
    text: PathBuf,
    binary: PathBuf,
}

const GENESIS_DIM: usize = 32;

/// Trains on Genesis twice with the same seed and one worker (a deterministic run): once writing
/// the text format, once the binary one. `None` without the `bible` program.
fn genesis(test: &str) -> Option<&'static Genesis> {
    static TRAINED: OnceLock<Option<Genesis>> = OnceLock::new();
    let trained = TRAINED.get_or_init(|| {
        let text = bible(GENESIS)?;
        let dir = scratch("genesis");
        let corpus = dir.join("genesis.txt");
        std::fs::write(&corpus, text).unwrap();
        let (text, binary) = (dir.join("vectors.txt"), dir.join("vectors.bin"));
        let flags = format!("--workers 1 --dim {GENESIS_DIM} --epochs 3 --min-count 3 --seed 11 --json");
        let job = word2vec_args(&corpus, &flags, &[]);
        let report = run_json(&[&job[..], &["--out", path_str(&text)]].concat());
        let again = run_json(&[&job[..], &["--out", path_str(&binary), "--binary"]].concat());
        assert_eq!(report["losses"], again["losses"], "one worker and one seed: the same run twice");
        Some(Genesis { report, text, binary })
    });
    if trained.is_none() {
        eprintln!("skipping {test}: no `bible` program (install Debian's bible-kjv: apt-get install bible-kjv)");
    }
    trained.as_ref()
}

#[test]
fn on_real_text_the_loss_falls_and_vectors_round_trip_in_both_formats() {
    let Some(g) = genesis("on_real_text_the_loss_falls_and_vectors_round_trip_in_both_formats") else { return };
    let r = &g.report;
    assert_eq!((r["app"].as_str(), r["epochs"].as_u64(), r["workers"].as_u64()), (Some("word2vec"), Some(3), Some(1)));
    // Zero output vectors: every pair starts at (1 + negative) ln 2.
    let initial = f64_at(r, "initial_loss");
    assert!((initial - 6.0 * std::f64::consts::LN_2).abs() < 1e-9, "{initial}");
    let losses: Vec<f64> = r["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 3);
    // (The last epoch's loss may tick up a little, as gensim's does; the trend is down.)
    assert!(losses.iter().all(|&l| l.is_finite() && l < 0.85 * initial), "{initial} -> {losses:?}");
    assert!(losses[2] < losses[0] && losses[2] < 0.75 * initial, "{initial} -> {losses:?}");
    // Genesis: 38,000-odd words as read; the vocabulary at min-count 3.
    let (words, vocab) = (r["corpus_words"].as_u64().unwrap(), r["vocab_size"].as_u64().unwrap() as usize);
    assert!((36_000..40_000).contains(&words), "{words} corpus words");
    assert!((800..2_000).contains(&vocab), "{vocab} words at min-count 3");
    assert!(f64_at(r, "words_per_s") > 0.0);

    let text = read_vectors(&g.text, Format::Text);
    let binary = read_vectors(&g.binary, Format::Binary);
    assert_eq!((text.len(), text.dim), (vocab, GENESIS_DIM));
    // The vocabulary's order, most frequent first: "and" opens nearly every verse.
    assert_eq!(&text.words[..3], ["and", "the", "of"]);
    let mut unique = text.words.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), vocab, "a word twice in the vectors file");
    assert!(text.data.iter().all(|x| x.is_finite()));
    // Trained: rows differ in length (the initial ±0.5/dim are all short).
    let norms = text.norms();
    assert!(norms.iter().all(|&n| n > 0.0) && norms.iter().any(|&n| n > 1.0), "{:?}", &norms[..5]);
    // The text format carries every bit of an f32: both files hold the same run's vectors.
    assert_eq!(binary.words, text.words);
    let differ = binary.data.iter().zip(&text.data).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "values differ between the text and the binary file");
}

const NEIGHBOURS_SCRIPT: &str = r#"
import json, sys
from gensim.models import KeyedVectors
text, binary, query = sys.argv[1:4]
out = {}
for name, path, is_binary in (("text", text, False), ("binary", binary, True)):
    kv = KeyedVectors.load_word2vec_format(path, binary=is_binary)
    out[name] = {
        "words": len(kv),
        "dim": kv.vector_size,
        "first": kv.index_to_key[:3],
        "vector": [float(x) for x in kv[query]],
        "neighbours": [[w, float(s)] for w, s in kv.most_similar(query, topn=5)],
    }
print(json.dumps(out))
"#;

#[test]
fn gensim_loads_the_vectors_the_cli_wrote_and_finds_the_same_neighbours() {
    let test = "gensim_loads_the_vectors_the_cli_wrote_and_finds_the_same_neighbours";
    let Some(python) = gensim_python() else {
        eprintln!("skipping {test}: no python with gensim (set PARAMSERV_PYTHON, or install gensim for python3)");
        return;
    };
    let Some(g) = genesis(test) else { return };
    let query = "god";
    let child = Command::new(python)
        .arg("-c")
        .arg(NEIGHBOURS_SCRIPT)
        .args([path_str(&g.text), path_str(&g.binary), query])
        .env("PYTHONWARNINGS", "ignore")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, PYTHON_LIMIT, "python with gensim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gensim failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}): {stdout}"));

    let ours = read_vectors(&g.text, Format::Text);
    let unit = ours.normalized();
    let q = ours.position(query).expect("'god' is in Genesis's vocabulary");
    let cosine =
        |i: usize| unit.row(q).iter().zip(unit.row(i)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
    let mut best: Vec<f64> = (0..ours.len()).filter(|&i| i != q).map(cosine).collect();
    best.sort_by(|a, b| b.total_cmp(a));
    for format in ["text", "binary"] {
        let t = &theirs[format];
        assert_eq!(t["words"].as_u64(), Some(ours.len() as u64), "{format}");
        assert_eq!(t["dim"].as_u64(), Some(GENESIS_DIM as u64), "{format}");
        assert_eq!(t["first"], serde_json::json!(ours.words[..3]), "{format}");
        let vector: Vec<f32> = t["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(vector, ours.row(q), "{format}: gensim read other values for '{query}'");
        // gensim's 5 nearest are ours: the same cosines (gensim computes in f32), none beaten.
        let neighbours = t["neighbours"].as_array().unwrap();
        assert_eq!(neighbours.len(), 5, "{format}: {t}");
        for (rank, n) in neighbours.iter().enumerate() {
            let (word, score) = (n[0].as_str().unwrap(), n[1].as_f64().unwrap());
            let i = ours.position(word).unwrap_or_else(|| panic!("{format}: gensim's neighbour {word:?} is not ours"));
            assert!(i != q, "{format}: the query is its own neighbour");
            assert!((cosine(i) - score).abs() < 1e-5, "{format}: cos({query}, {word}) {} vs gensim {score}", cosine(i));
            assert!((best[rank] - score).abs() < 1e-5, "{format}: our #{rank} is {}, gensim's {score}", best[rank]);
        }
    }
}

// --- bad input ---------------------------------------------------------------------------------

/// Runs `paramserv args`, which must fail with `code`; returns its stderr.
fn fails_with(args: &[&str], code: i32) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

/// A small synthetic corpus (planted groups `g0_0` ...) written as a text file.
fn synthetic_file(dir: &Path, corpus: &SyntheticCorpus) -> PathBuf {
    let path = dir.join("synthetic.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    corpus.write_text(&mut out).unwrap();
    drop(out);
    path
}

/// Tiny: 1,500 sentences of 10 words, 200 background words and 4 groups of 4.
fn tiny_synthetic() -> SyntheticCorpus {
    SyntheticCorpus {
        background_words: 200,
        groups: 4,
        group_size: 4,
        sentences: 1_500,
        sentence_length: 10,
        topic_probability: 0.3,
        seed: 5,
    }
}

#[test]
fn a_corpus_that_cannot_train_is_refused_before_anything_runs() {
    let dir = scratch("refused");
    let missing = dir.join("no-such-corpus.txt");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, " \n\t\n\n").unwrap();
    let rare = dir.join("rare.txt");
    std::fs::write(&rare, "in the beginning\nthe word\nand the word was\n").unwrap();
    let cases: [(&[&str], String); 4] = [
        (&["word2vec", "--corpus", path_str(&missing)], format!("corpus file {} not found", missing.display())),
        (&["word2vec", "--corpus", path_str(&empty)], format!("corpus {} is empty: it has no words", empty.display())),
        (
            &["word2vec", "--corpus", path_str(&rare), "--min-count", "5"],
            format!(
                "no word of corpus {} occurs 5 times or more (the most frequent, 'the', occurs 3 times): use a \
                 --min-count of at most 3",
                rare.display()
            ),
        ),
        // The coordinator of a multi-process job reads the corpus before it listens.
        (
            &["coordinator", "--app", "word2vec", "--listen", "127.0.0.1:0", "--corpus", path_str(&missing)],
            format!("corpus file {} not found", missing.display()),
        ),
    ];
    for (args, says) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: an invalid corpus exits with 2: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(&says), "{args:?}: {stderr}");
        // Nothing ran: no epoch line, no listening line.
        assert!(out.stdout.is_empty() && !stderr.contains("epoch"), "{args:?}: {stderr}");
    }
    // A bad flag of the app is named as well.
    let err = fails_with(&["word2vec", "--corpus", path_str(&rare), "--dim", "0"], 2);
    assert!(err.contains("dim") && err.contains("must be 1 to 4096"), "{err}");
}

#[test]
fn malformed_lines_of_evaluation_files_are_skipped_and_counted() {
    let dir = scratch("malformed_eval");
    let corpus = synthetic_file(&dir, &tiny_synthetic());
    let pairs = dir.join("pairs.tsv");
    let mut p = b"# word1\tword2\tscore (a comment)\n\ng0_0\tg0_1\t9.5\ng0_0\tg1_0\t1\ng2_2\tw3\t2.5\n".to_vec();
    // Four malformed: two fields, a score that is no number, NaN, and bytes that are not UTF-8.
    p.extend_from_slice(b"g0_0\tg0_2\ng0_0\tg0_2\thigh\ng1_0\tg1_1\tNaN\ng\xff0_1\tg0_3\t8\n");
    p.extend_from_slice(b"nosuchword\tg0_1\t3\n");
    std::fs::write(&pairs, p).unwrap();
    let questions = dir.join("questions.txt");
    let mut q = b"g0_0 g0_1 g1_0 g1_1\n: groups\ng0_0 g0_1 g1_0 g1_1\ng2_0 g2_1 g3_0 g3_1\n".to_vec();
    // Four malformed: the question before any section above, three words, five, not UTF-8.
    q.extend_from_slice(
        b"g0_0 g0_1 g1_0\ng0_0 g0_1 g1_0 g1_1 g2_0\ng0_0 g0_1 g\xfe1_0 g1_1\nnosuchword g0_1 g1_0 g1_1\n",
    );
    std::fs::write(&questions, q).unwrap();

    let r = run_json(&word2vec_args(
        &corpus,
        "--dim 16 --epochs 1 --min-count 2 --json",
        &["--eval-similarity", path_str(&pairs), "--eval-analogy", path_str(&questions)],
    ));
    assert_eq!(r["similarity_malformed_lines"].as_u64(), Some(4), "{r}");
    assert_eq!(r["analogy_malformed_lines"].as_u64(), Some(4), "{r}");
    // The valid lines are scored: 3 of 4 pairs and 2 of 3 questions have every word known.
    assert!((f64_at(&r, "similarity_coverage") - 0.75).abs() < 1e-12, "{r}");
    assert!(f64_at(&r, "similarity_spearman").is_finite(), "{r}");
    assert!((f64_at(&r, "analogy_coverage") - 2.0 / 3.0).abs() < 1e-12, "{r}");
    assert!((0.0..=1.0).contains(&f64_at(&r, "analogy_accuracy")), "{r}");
}

#[test]
fn an_evaluation_file_that_cannot_be_used_fails_the_run_naming_it() {
    let dir = scratch("unusable_eval");
    let corpus = synthetic_file(&dir, &tiny_synthetic());
    let garbage = dir.join("garbage.tsv");
    std::fs::write(&garbage, "not\ta similarity file\tat all\nnor this\n").unwrap();
    let job = ["word2vec", "--corpus", path_str(&corpus), "--dim", "8", "--epochs", "1", "--min-count", "2"];
    let missing = dir.join("no-such-pairs.tsv");
    // Refused before training (exit 2, no epoch ran), as a bad corpus is.
    let err = fails_with(&[&job[..], &["--eval-similarity", path_str(&missing)]].concat(), 2);
    assert!(err.contains(&format!("cannot read {}", missing.display())) && !err.contains("epoch"), "{err}");
    let err = fails_with(&[&job[..], &["--eval-analogy", path_str(&garbage)]].concat(), 2);
    assert!(err.contains(&format!("{}: no valid line (2 malformed)", garbage.display())), "{err}");
}

#[test]
fn a_corpus_with_bytes_that_are_not_utf8_trains() {
    let dir = scratch("not_utf8");
    let corpus = dir.join("latin1.txt");
    let mut text = Vec::new();
    for i in 0..300 {
        // "café" in Latin-1, a lone continuation byte, a truncated sequence, and plain words.
        text.extend_from_slice(format!("the caf\u{e9} is w{} and ", i % 17).as_bytes());
        text.extend_from_slice(b"caf\xe9 \x80x na\xc3 \xff\xfe w");
        text.extend_from_slice(format!("{}\n", i % 13).as_bytes());
    }
    std::fs::write(&corpus, &text).unwrap();
    let out = dir.join("vectors.txt");
    let r = run_json(&word2vec_args(&corpus, "--dim 8 --epochs 1 --min-count 2 --json", &["--out", path_str(&out)]));
    let v = read_vectors(&out, Format::Text);
    assert_eq!(r["vocab_size"].as_u64(), Some(v.len() as u64));
    // Invalid sequences are decoded as U+FFFD, so "caf\xe9" is a word of its own, apart from "café".
    for word in ["café", "caf\u{fffd}", "\u{fffd}x", "na\u{fffd}", "\u{fffd}\u{fffd}", "the", "w3"] {
        assert!(v.position(word).is_some(), "{word:?} is not in {:?}", v.words);
    }
    assert!(v.data.iter().all(|x| x.is_finite()));
    assert!(f64_at(&r, "final_loss") < f64_at(&r, "initial_loss"), "{r}");
}

// --- the multi-process job ---------------------------------------------------------------------

#[test]
fn a_coordinator_a_server_and_two_worker_processes_train_word2vec_over_tcp() {
    let dir = scratch("processes");
    let synthetic = SyntheticCorpus { sentences: 2_000, sentence_length: 12, ..tiny_synthetic() };
    let corpus = synthetic_file(&dir, &synthetic);
    // Pairs of planted words: the same group scores 10, the next group 1; one pair is unknown.
    let groups = synthetic.planted_groups();
    let mut pairs = String::new();
    for (g, group) in groups.iter().enumerate() {
        let next = &groups[(g + 1) % groups.len()];
        for i in 0..group.len() {
            for j in i + 1..group.len() {
                pairs += &format!("{}\t{}\t10\n{}\t{}\t1\n", group[i], group[j], group[i], next[j]);
            }
        }
    }
    pairs += "unknown\tg0_0\t5\n";
    let pairs_file = dir.join("pairs.tsv");
    std::fs::write(&pairs_file, pairs).unwrap();
    let out = dir.join("vectors.bin");

    let mut coordinator = paramserv()
        .args(["coordinator", "--app", "word2vec", "--listen", "127.0.0.1:0", "--servers", "1", "--workers", "2"])
        .args(["--corpus", path_str(&corpus), "--dim", "20", "--epochs", "2", "--min-count", "2"])
        .args(["--batch-words", "3000", "--eval-similarity", path_str(&pairs_file)])
        .args(["--out", path_str(&out), "--binary"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut coordinator, LIMIT);
    let mut coordinator = KillOnDrop(Some(coordinator));
    let addr = line.trim().strip_prefix("coordinator listening on ").unwrap_or_else(|| panic!("first line: {line}"));
    let server = paramserv()
        .args(["server", "--coordinator", addr, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(Some(server));
    let workers: Vec<KillOnDrop> = (0..2)
        .map(|_| {
            let mut w = paramserv();
            w.args(["worker", "--coordinator", addr, "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped());
            KillOnDrop(Some(w.spawn().unwrap()))
        })
        .collect();
    let reports: Vec<Value> = workers
        .into_iter()
        .map(|mut w| {
            let out = wait_output(w.0.take().unwrap(), LIMIT, "worker");
            assert!(out.status.success(), "a worker failed: {}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("worker stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout))
            })
        })
        .collect();
    for (child, what) in [(&mut server, "server"), (&mut coordinator, "coordinator")] {
        let out = wait_output(child.0.take().unwrap(), LIMIT, what);
        assert!(out.status.success(), "the {what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    // Both processes report the job's figures: reduced over workers, the same in each.
    let same = "app losses final_loss bytes_sent bytes_received vocab_size corpus_words similarity_spearman \
                similarity_coverage similarity_malformed_lines links codecs";
    for key in same.split_whitespace() {
        assert_eq!(reports[0][key], reports[1][key], "workers disagree on '{key}'");
    }
    let r = &reports[0];
    assert_eq!((r["app"].as_str(), r["transport"].as_str()), (Some("word2vec"), Some("tcp")));
    assert_eq!((r["workers"].as_u64(), r["servers"].as_u64(), r["epochs"].as_u64()), (Some(2), Some(1), Some(2)));
    assert_eq!(r["links"].as_array().unwrap().len(), 2);
    assert_eq!(r["corpus_words"].as_u64(), Some(synthetic.tokens()));
    assert!(f64_at(r, "final_loss") < 0.9 * f64_at(r, "initial_loss"), "{r}");
    assert!((f64_at(r, "similarity_coverage") - 48.0 / 49.0).abs() < 1e-12, "{r}");
    eprintln!("over TCP: losses {}, Spearman on planted pairs {}", r["losses"], r["similarity_spearman"]);
    // Planted words of one group ended up closer than words of two groups.
    assert!(f64_at(r, "similarity_spearman") > 0.6, "{r}");
    // Worker 0 wrote the vectors where the coordinator's job said.
    let v = read_vectors(&out, Format::Binary);
    assert_eq!((v.len() as u64, v.dim), (r["vocab_size"].as_u64().unwrap(), 20));
}

// --- consistency models ------------------------------------------------------------------------

/// The planted-group score of word2vec on a small synthetic corpus, trained by 2 workers under
/// `consistency`, and the score of random vectors over the same vocabulary. Small minibatches
/// (about 75 steps) over loopback TCP: a push that reaches its server after the worker's clock
/// reached the coordinator shows up here, where in-process links hide it most of the time.
async fn planted_score(consistency: Consistency) -> (f64, f64) {
    let synthetic = SyntheticCorpus {
        background_words: 300,
        groups: 6,
        group_size: 5,
        sentences: 2_500,
        sentence_length: 12,
        topic_probability: 0.35,
        seed: 17,
    };
    let corpus = Corpus::Synthetic(synthetic.clone());
    let cfg = Word2vecConfig { dim: 24, epochs: 3, min_count: 2, batch_words: 600, ..Word2vecConfig::new(corpus) }
        .with_vocabulary()
        .unwrap();
    let mut job = JobConfig::new(AppConfig::Word2vec(cfg.clone()), cfg.tables(Partitioning::Range)).unwrap();
    job.consistency = consistency;
    job.validate().unwrap();
    let reports = bounded(LocalCluster::new(1, 2, Transport::Tcp).run(&job, |w| run_app(w, |_| {}))).await.unwrap();
    assert_eq!(reports.len(), 2);
    let scores: Vec<f64> = reports
        .iter()
        .map(|r| r.word2vec.as_ref().unwrap().evaluation.planted_group_score.expect("a synthetic corpus is scored"))
        .collect();
    assert_eq!(scores[0], scores[1], "{consistency}: workers disagree");
    let r = &reports[0];
    assert!(r.final_loss < 0.8 * r.initial_loss, "{consistency}: {} -> {:?}", r.initial_loss, r.losses);

    // The control: uniform random vectors over the same words (as the tables start).
    let words = train::scan(&cfg.corpus, cfg.min_count).unwrap().vocab.words().to_vec();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let data = (0..words.len() * 24)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let random = eval::planted_group_score(&Embeddings::new(words, 24, data), &synthetic.planted_groups()).unwrap();
    (scores[0], random)
}

/// The planted groups emerge from 2 workers' pushes; the score is far above random vectors'.
async fn finds_the_planted_groups(consistency: Consistency) {
    let (score, random) = planted_score(consistency).await;
    eprintln!("{consistency}: planted-group score {score:.3}, random vectors {random:.3}");
    assert!(random < 0.1, "random vectors score {random}");
    assert!(score > 0.6 && score > 6.0 * random, "{consistency}: score {score} vs {random} for random vectors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asp_workers_find_the_planted_groups() {
    finds_the_planted_groups(Consistency::Asp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bsp_workers_find_the_planted_groups() {
    finds_the_planted_groups(Consistency::Bsp).await;
}
