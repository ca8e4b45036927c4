//! word2vec vectors files and evaluations: the committed tiny data (answers checked by hand and
//! with gensim 4.4), and gensim itself as the oracle when a python with gensim is available.
//!
//! The oracle tests run `$PARAMSERV_PYTHON` (failing if it cannot import gensim), else `python3`
//! when it can import gensim, numpy and scipy; without one they print why and pass. Each python
//! run is bounded by [`PYTHON_LIMIT`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paramserv::apps::word2vec::eval::{
    self, Analogies, AnalogyOptions, EvalError, SectionScore, SimilarityOptions, WordPairs,
};
use paramserv::apps::word2vec::vectors::{self, Embeddings, Format};
use serde_json::Value;

use crate::util::{PYTHON_LIMIT, gensim_python, wait_output};

/// Our scores equal gensim's to this (cosines differ in the last bits: gensim computes in `f32`).
const ORACLE_TOLERANCE: f64 = 1e-6;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/word2vec").join(name)
}

fn tiny() -> Embeddings {
    let file = std::fs::File::open(data("tiny.vec")).unwrap();
    vectors::read(std::io::BufReader::new(file), Format::Text).unwrap()
}

#[test]
fn tiny_similarity_file_scores_as_gensim() {
    // gensim 4.4 evaluate_word_pairs on these files: pearson -0.11105545006337525, spearman
    // 0.44721359549995787 (three tied cosines of 1/√2), 16.67% OOV.
    let s = eval::evaluate_similarity(data("pairs.tsv"), &tiny(), &SimilarityOptions::default()).unwrap();
    assert!((s.spearman.unwrap() - 0.447_213_595_499_957_87).abs() < 1e-12, "{s:?}");
    assert!((s.pearson.unwrap() - -0.111_055_450_063_375_25).abs() < 1e-7, "{s:?}");
    assert_eq!((s.pairs_used, s.pairs_total, s.oov_pairs, s.malformed_lines), (5, 6, 1, 2));
    assert!((s.coverage - 5.0 / 6.0).abs() < 1e-15);
}

#[test]
fn tiny_analogy_file_scores_as_gensim() {
    // gensim 4.4 evaluate_word_analogies: royals 4/4, fruit 1/2, total 5/6.
    let a = eval::evaluate_analogies(data("questions.txt"), &tiny(), 30_000).unwrap();
    assert_eq!((a.correct, a.attempted, a.total, a.malformed_lines), (5, 6, 7, 1));
    assert_eq!(
        a.sections,
        vec![
            SectionScore { name: "royals".into(), correct: 4, attempted: 4, total: 5 },
            SectionScore { name: "fruit".into(), correct: 1, attempted: 2, total: 2 },
        ]
    );
    assert!((a.accuracy - 5.0 / 6.0).abs() < 1e-15 && (a.coverage - 6.0 / 7.0).abs() < 1e-15);
}

#[test]
fn missing_evaluation_files_name_their_path() {
    let e = eval::evaluate_similarity("/no/such/dir/ws.tsv", &tiny(), &SimilarityOptions::default()).unwrap_err();
    assert!(matches!(&e, EvalError::Read { path: Some(p), .. } if p == Path::new("/no/such/dir/ws.tsv")));
    assert!(e.to_string().contains("/no/such/dir/ws.tsv"), "{e}");
    let e = eval::evaluate_analogies("/no/such/dir/q.txt", &tiny(), 10).unwrap_err();
    assert!(e.to_string().contains("/no/such/dir/q.txt"), "{e}");
    // A vectors file is not a similarity file: every line is malformed.
    let e = WordPairs::read(data("tiny.vec")).unwrap_err();
    assert!(e.to_string().ends_with("tiny.vec: no valid line (8 malformed)"), "{e}");
}

/// SplitMix64, for seeded test vectors.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (1.0 - self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Skips the test (with a message) when there is no python with gensim.
macro_rules! python_or_skip {
    ($test:literal) => {
        match gensim_python() {
            Some(p) => p,
            None => {
                eprintln!(
                    "skipping {}: no python with gensim (set PARAMSERV_PYTHON, or install gensim for python3)",
                    $test
                );
                return;
            }
        }
    };
}

/// Runs `script` with `args`; its last stdout line is JSON.
fn run_python(python: &str, script: &str, args: &[&Path]) -> Value {
    let child = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning python");
    let out = wait_output(child, PYTHON_LIMIT, "python with gensim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python printed no JSON ({e}): {stdout}"))
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("word2vec_eval").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, emb: &Embeddings, format: Format) {
    let file = std::fs::File::create(path).unwrap();
    match format {
        Format::Text => vectors::write_text(emb, file).unwrap(),
        Format::Binary => vectors::write_binary(emb, file).unwrap(),
    }
}

fn read(path: &Path, format: Format) -> Embeddings {
    vectors::read(std::io::BufReader::new(std::fs::File::open(path).unwrap()), format).unwrap()
}

const LOAD_SCRIPT: &str = r#"
import json, sys
import numpy as np
from gensim.models import KeyedVectors
out = {}
for name, path, binary in (("text", sys.argv[1], False), ("binary", sys.argv[2], True)):
    kv = KeyedVectors.load_word2vec_format(path, binary=binary)
    out[name] = {"words": list(kv.index_to_key), "bits": kv.vectors.view(np.uint32).ravel().tolist()}
kv.save_word2vec_format(sys.argv[3], binary=False)
kv.save_word2vec_format(sys.argv[4], binary=True)
print(json.dumps(out))
"#;

#[test]
fn gensim_reads_our_vectors_exactly_and_we_read_its() {
    let python = python_or_skip!("gensim_reads_our_vectors_exactly_and_we_read_its");
    let mut rng = Rng(7);
    let special = [
        0.0,
        -0.0,
        1.0,
        0.1,
        -2.5e-5,
        1e-4,
        9.999_999e-5,
        1e16,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::EPSILON,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let mut words: Vec<String> =
        ["the", "naïve", "東京", "🦀", "Zürich", "a-b", "#hash", ":colon", "x'y", "ǅemal"].map(String::from).to_vec();
    words.extend((0..290).map(|i| format!("w{i}")));
    let dim = 9;
    let data: Vec<f32> = (0..words.len() * dim)
        .map(|i| match i {
            i if i < special.len() => special[i],
            i if i % 3 == 0 => rng.normal(),
            _ => loop {
                // Any finite bit pattern: every exponent, subnormals included.
                let x = f32::from_bits(rng.next_u64() as u32);
                if !x.is_nan() {
                    break x;
                }
            },
        })
        .collect();
    let emb = Embeddings::new(words, dim, data);
    let dir = scratch("load");
    let (text, binary) = (dir.join("ours.txt"), dir.join("ours.bin"));
    write(&text, &emb, Format::Text);
    write(&binary, &emb, Format::Binary);
    let (theirs_text, theirs_binary) = (dir.join("gensim.txt"), dir.join("gensim.bin"));
    let out = run_python(python, LOAD_SCRIPT, &[&text, &binary, &theirs_text, &theirs_binary]);
    let bits: Vec<u64> = emb.data.iter().map(|x| u64::from(x.to_bits())).collect();
    for format in ["text", "binary"] {
        let words: Vec<String> = serde_json::from_value(out[format]["words"].clone()).unwrap();
        assert_eq!(words, emb.words, "gensim read other words from our {format} file");
        let theirs: Vec<u64> = serde_json::from_value(out[format]["bits"].clone()).unwrap();
        let bad: Vec<_> = (0..bits.len()).filter(|&i| bits[i] != theirs[i]).take(5).collect();
        assert!(theirs.len() == bits.len() && bad.is_empty(), "{format}: values differ at {bad:?}");
    }
    // And back: gensim's text has numpy's digits, its binary has no "\n" after a row.
    for (path, format) in [(theirs_text, Format::Text), (theirs_binary, Format::Binary)] {
        let back = read(&path, format);
        assert_eq!(back.words, emb.words);
        assert!(back.data.iter().zip(&emb.data).all(|(a, b)| a.to_bits() == b.to_bits()), "{format:?}");
    }
}

const SCORE_SCRIPT: &str = r#"
import json, sys
import numpy as np
from gensim.models import KeyedVectors
from gensim.test.utils import datapath
mode = sys.argv[1]
if mode == "paths":
    print(json.dumps([datapath(f) for f in ("wordsim353.tsv", "simlex999.txt", "questions-words.txt")]))
    sys.exit(0)
kv = KeyedVectors.load_word2vec_format(sys.argv[2], binary=False)
ws, sl, qw = sys.argv[3:6]
restricts = [int(r) for r in sys.argv[6].split(",")]
unit = kv.get_normed_vectors()

def fragile(path, r):
    # Questions whose six best candidates (question words excluded) are within 1e-5 of each
    # other: f32 rounding may order them differently in another implementation.
    ok = {}
    for i, k in reversed(list(enumerate(kv.index_to_key[:r]))):
        ok[k.upper()] = i
    qs = []
    for line in open(path, encoding="utf8"):
        if line.startswith(": "):
            continue
        w = [x.upper() for x in line.split()]
        if len(w) == 4 and all(x in ok for x in w):
            qs.append([ok[x] for x in w[:3]])
    if not qs:
        return 0
    qs = np.array(qs)
    q = unit[qs[:, 1]] + unit[qs[:, 2]] - unit[qs[:, 0]]
    with np.errstate(all="ignore"):
        d = (unit[:r] @ q.T).T
    d[np.isnan(d)] = -np.inf
    np.put_along_axis(d, qs, -np.inf, axis=1)
    top = -np.sort(-d, axis=1)[:, :6]
    return int(np.sum(np.any(np.abs(np.diff(top, axis=1)) < 1e-5, axis=1)))

out = {}
for r in restricts:
    res = {}
    for name, f in (("wordsim", ws), ("simlex", sl)):
        p, s, oov = kv.evaluate_word_pairs(f, restrict_vocab=r)
        res[name] = [float(p[0]), float(s[0]), float(oov)]
    score, sections = kv.evaluate_word_analogies(qw, restrict_vocab=r)
    res["analogy"] = [float(score), [[s["section"], len(s["correct"]), len(s["incorrect"])] for s in sections]]
    res["fragile"] = fragile(qw, r)
    out[str(r)] = res
print(json.dumps(out))
"#;

/// Embeddings over the words of the three files, their case variants and distractors, shuffled,
/// with structure so that some analogies come out right: within a section, `b = a + relation`.
fn oracle_embeddings(pairs: &[WordPairs], questions: &Analogies, seed: u64) -> Embeddings {
    let mut rng = Rng(seed);
    let mut words: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |w: &str, words: &mut Vec<String>| {
        if !w.is_empty() && !w.contains(char::is_whitespace) && seen.insert(w.to_owned()) {
            words.push(w.to_owned());
        }
    };
    for (i, p) in pairs.iter().flat_map(|p| &p.pairs).enumerate() {
        add(&p.a, &mut words);
        if !i.is_multiple_of(23) {
            add(&p.b, &mut words); // else unknown, unless elsewhere in the files
        }
    }
    for q in questions.sections.iter().flat_map(|s| &s.questions) {
        q.iter().for_each(|w| add(w, &mut words));
    }
    // Case variants of every seventh word (the first of each pair in vocabulary order wins).
    for w in words.clone().iter().step_by(7) {
        let variant = if w.chars().any(char::is_uppercase) { w.to_lowercase() } else { w.to_uppercase() };
        add(&variant, &mut words);
    }
    for i in 0..400 {
        add(&format!("distractor{i}"), &mut words);
    }
    rng.shuffle(&mut words);

    let dim = 24;
    let index: std::collections::HashMap<&str, usize> =
        words.iter().enumerate().map(|(i, w)| (w.as_str(), i)).collect();
    let mut data: Vec<f32> = (0..words.len() * dim).map(|_| rng.normal()).collect();
    let mut derived = vec![false; words.len()];
    for section in &questions.sections {
        let relation: Vec<f32> = (0..dim).map(|_| 1.5 * rng.normal()).collect();
        for q in &section.questions {
            for (a, b) in [(&q[0], &q[1]), (&q[2], &q[3])] {
                let (Some(&a), Some(&b)) = (index.get(a.as_str()), index.get(b.as_str())) else { continue };
                if a != b && !derived[b] {
                    derived[b] = true;
                    for k in 0..dim {
                        data[b * dim + k] = data[a * dim + k] + relation[k] + 0.4 * rng.normal();
                    }
                }
            }
        }
    }
    // One zero vector, of a word in no question: never an answer (gensim's scores for it are
    // NaN), cosine 0 (gensim's `unitvec` leaves it zero). As a question word, gensim would divide
    // it by its zero norm, and every score of that question would be NaN.
    let in_questions: std::collections::HashSet<&str> =
        questions.sections.iter().flat_map(|s| &s.questions).flatten().map(String::as_str).collect();
    let zero =
        pairs[0].pairs.iter().find(|p| !in_questions.contains(p.a.as_str())).map(|p| index[p.a.as_str()]).unwrap();
    data[zero * dim..(zero + 1) * dim].fill(0.0);
    Embeddings::new(words, dim, data)
}

#[test]
fn scores_equal_gensims() {
    let python = python_or_skip!("scores_equal_gensims");
    let paths = run_python(python, SCORE_SCRIPT, &[Path::new("paths")]);
    let paths: Vec<PathBuf> = serde_json::from_value(paths).unwrap();
    let pairs = [WordPairs::read(&paths[0]).unwrap(), WordPairs::read(&paths[1]).unwrap()];
    let questions = Analogies::read(&paths[2]).unwrap();
    assert_eq!(questions.total(), 19_544);
    assert_eq!((pairs[0].pairs.len(), pairs[1].pairs.len()), (353, 999));

    let emb = oracle_embeddings(&pairs, &questions, 2024);
    let dir = scratch("scores");
    let file = dir.join("vectors.txt");
    write(&file, &emb, Format::Text);
    assert_eq!(read(&file, Format::Text), emb);
    let restricts = [emb.len(), emb.len() * 3 / 5];
    let list = restricts.map(|r| r.to_string()).join(",");
    let out = run_python(
        python,
        SCORE_SCRIPT,
        &[Path::new("score"), &file, &paths[0], &paths[1], &paths[2], Path::new(&list)],
    );

    for restrict in restricts {
        let theirs = &out[restrict.to_string()];
        let at = |v: &Value, i: usize| v[i].as_f64().unwrap();
        for (p, name) in pairs.iter().zip(["wordsim", "simlex"]) {
            let ours = p.evaluate(&emb, &SimilarityOptions { restrict, case_insensitive: true });
            let t = &theirs[name];
            let msg = format!("{name}, restrict {restrict}: ours {ours:?}, gensim {t}");
            assert!((ours.pearson.unwrap() - at(t, 0)).abs() < ORACLE_TOLERANCE, "{msg}");
            assert!((ours.spearman.unwrap() - at(t, 1)).abs() < ORACLE_TOLERANCE, "{msg}");
            assert!((100.0 * (1.0 - ours.coverage) - at(t, 2)).abs() < 1e-9, "{msg}");
            assert!(ours.pairs_used > 100 && ours.oov_pairs > 0, "{msg}");
        }

        let ours = questions.evaluate(&emb, &AnalogyOptions { restrict, case_insensitive: true });
        let (score, sections) = (at(&theirs["analogy"], 0), theirs["analogy"][1].as_array().unwrap());
        let fragile = theirs["fragile"].as_u64().unwrap() as usize;
        // gensim's list ends with the total.
        assert_eq!(sections.len(), ours.sections.len() + 1);
        let mut differ = 0;
        for (o, t) in ours.sections.iter().zip(sections) {
            let (correct, wrong) = (t[1].as_u64().unwrap() as usize, t[2].as_u64().unwrap() as usize);
            assert_eq!(
                (o.name.as_str(), o.attempted),
                (t[0].as_str().unwrap(), correct + wrong),
                "restrict {restrict}"
            );
            differ += o.correct.abs_diff(correct);
        }
        eprintln!(
            "restrict {restrict}: {}/{} right, {} of {} attempted, gensim {score}, {fragile} near ties",
            ours.correct, ours.attempted, ours.attempted, ours.total
        );
        assert!(differ <= fragile, "restrict {restrict}: {differ} answers differ, {fragile} near ties");
        if fragile == 0 {
            assert!((ours.accuracy - score).abs() < ORACLE_TOLERANCE, "{} vs {score}", ours.accuracy);
        }
        assert!(ours.correct > ours.attempted / 10 && ours.correct < ours.attempted, "a test that cannot fail");
        assert!(restrict == emb.len() || ours.attempted < ours.total);
    }
}

/// The full-size analogy evaluation: 30k words × 100 dimensions, 19 544 questions all attempted.
/// Run it in release: `cargo test --release --test it analogy_speed -- --ignored --nocapture`.
#[test]
#[ignore = "timing, run by name in release"]
fn analogy_speed() {
    let (words, dim, questions) = (30_000, 100, 19_544);
    let mut rng = Rng(3);
    let names: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
    let data = (0..words * dim).map(|_| rng.normal()).collect();
    let emb = Embeddings::new(names, dim, data);
    let mut text = String::from(": all\n");
    for _ in 0..questions {
        let q: Vec<String> = (0..4).map(|_| format!("w{}", rng.below(words))).collect();
        text.push_str(&(q.join(" ") + "\n"));
    }
    let q = Analogies::parse(text.as_bytes()).unwrap();
    let start = Instant::now();
    let score = q.evaluate(&emb, &AnalogyOptions { restrict: words, case_insensitive: true });
    let took = start.elapsed();
    eprintln!("{questions} questions over {words} words × {dim}: {took:?} ({} right)", score.correct);
    assert_eq!(score.attempted, questions);
    assert!(took < Duration::from_secs(10), "{took:?}");
}
