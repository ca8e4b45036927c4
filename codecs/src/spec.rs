//! Codec pipelines as strings: `ef(topk:0.01)|zstd:3`, `ef(onebit)`, `sketchml:buckets=256`, `fp16`.
//!
//! Grammar (whitespace is not allowed):
//!
//! ```text
//! pipeline := value ('|' byte_stage)*
//! value    := 'ef(' value ')' | codec
//! codec    := name (':' param (',' param)*)?
//! param    := number            (the codec's parameters in the order `CODECS` lists them)
//!           | key '=' number
//!           | flag              (a boolean parameter named alone means true)
//! ```
//!
//! The one byte stage is `zstd`. A parse error lists every codec with its parameters and
//! defaults, so a typo on the command line tells the user what exists. [`CodecSpec`] prints back in
//! canonical form (the main parameter of `topk`, `randomk`, `threshold` and `zstd` by position,
//! other parameters only when they differ from their defaults), and `parse(print(s)) == s`.

use std::fmt;
use std::str::FromStr;

/// A parsed codec pipeline: what [`crate::Pipeline::new`] builds an encoder from.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(try_from = "String", into = "String")
)]
pub enum CodecSpec {
    /// Lossless little-endian `f32`.
    Raw,
    /// IEEE half precision, round to nearest even.
    Fp16,
    /// bfloat16 (the top 16 bits of an `f32`), round to nearest even.
    Bf16,
    /// The `ratio · n` largest-magnitude elements as (index, value) pairs.
    TopK {
        /// Fraction of elements kept, in (0, 1].
        ratio: f64,
        /// Select with a threshold estimated from a sample (DGC-style) instead of exactly.
        approx: bool,
    },
    /// `ratio · n` elements chosen uniformly at random; the indices come from a seed in the payload.
    RandomK {
        /// Fraction of elements kept, in (0, 1].
        ratio: f64,
    },
    /// Every element with `|g| > tau`, as (index, value) pairs.
    Threshold {
        /// Magnitude an element must exceed to be sent.
        tau: f32,
    },
    /// 1-bit quantization (Seide et al. 2014): a sign bit per element, and per block the means of
    /// the positive and of the negative elements.
    OneBit {
        /// Elements per block.
        block: u32,
    },
    /// signSGD with scale: a sign bit per element and the mean |g| per block.
    SignSgd {
        /// Elements per block.
        block: u32,
    },
    /// QSGD (Alistarh et al. 2017): per bucket the L2 norm, per element a sign and one of `levels`
    /// levels, rounded stochastically so the decoded value is unbiased.
    Qsgd {
        /// Quantization levels s.
        levels: u32,
        /// Elements per bucket (one norm each).
        bucket: u32,
    },
    /// TernGrad (Wen et al. 2017): per bucket max |g|, per element a stochastic ternary value.
    TernGrad {
        /// Elements per bucket (one scale each).
        bucket: u32,
    },
    /// SketchML (Jiang et al. 2018): quantile buckets over the values, bucket indices held in a
    /// grouped MinMaxSketch by position, nonzero positions delta-coded.
    SketchMl {
        /// Quantile buckets (the decoded values are their means).
        buckets: u32,
        /// Groups the buckets are split into (one MinMaxSketch each); as many as buckets by default,
        /// which makes the sketch exact.
        groups: u32,
        /// Hash rows per sketch.
        rows: u32,
        /// Sketch columns per row, as a fraction of the group's element count.
        cols: f64,
    },
    /// Error feedback around a lossy codec: what it dropped is added to the next input.
    ErrorFeedback(Box<Self>),
    /// zstd over the inner codec's payload, optionally byte-shuffled first.
    Zstd {
        /// The codec whose payload is compressed.
        inner: Box<Self>,
        /// zstd level.
        level: i32,
        /// Group the bytes of each 4-byte word by position before compressing (Blosc's shuffle).
        shuffle: bool,
    },
}

/// Pipelines that together cover every codec and stage: what the benchmarks measure by default.
pub const EVERY_CODEC: &[&str] = &[
    "raw",
    "fp16",
    "bf16",
    "topk:0.01",
    "topk:0.01,approx",
    "randomk:0.01",
    "threshold:2.5",
    "onebit",
    "ef(onebit)",
    "signsgd",
    "qsgd",
    "terngrad",
    "sketchml",
    "raw|zstd:3",
    "raw|zstd:3,shuffle",
    "ef(topk:0.01)|zstd:3",
];

/// Defaults, shared by parsing, printing and the codec constructors.
pub mod defaults {
    /// `topk` and `randomk` ratio.
    pub const RATIO: f64 = 0.01;
    /// `threshold` tau.
    pub const TAU: f32 = 0.01;
    /// `onebit` and `signsgd` block.
    pub const SIGN_BLOCK: u32 = 4096;
    /// `qsgd` levels.
    pub const QSGD_LEVELS: u32 = 16;
    /// `qsgd` bucket.
    pub const QSGD_BUCKET: u32 = 512;
    /// `terngrad` bucket.
    pub const TERNGRAD_BUCKET: u32 = 4096;
    /// `sketchml` buckets. Groups default to as many as buckets: every bucket its own group, so
    /// the sketch is exact (see the `sketchml` module for why).
    pub const SKETCH_BUCKETS: u32 = 64;
    /// `sketchml` rows.
    pub const SKETCH_ROWS: u32 = 2;
    /// `sketchml` columns per group element.
    pub const SKETCH_COLS: f64 = 0.3;
    /// `zstd` level.
    pub const ZSTD_LEVEL: i32 = 3;
}

use defaults as d;

/// A parameter's type and the values it accepts.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A real in `(lo, hi]` when `open_lo`, else `[lo, hi]`.
    Real {
        lo: f64,
        hi: f64,
        open_lo: bool,
    },
    Int {
        lo: i64,
        hi: i64,
    },
    Flag,
}

#[derive(Clone, Copy, Debug)]
struct Param {
    name: &'static str,
    kind: Kind,
    default: &'static str,
}

/// One entry of the registry parse errors print.
#[derive(Clone, Copy, Debug)]
struct CodecInfo {
    name: &'static str,
    params: &'static [Param],
    what: &'static str,
}

const fn real(name: &'static str, lo: f64, hi: f64, open_lo: bool, default: &'static str) -> Param {
    Param { name, kind: Kind::Real { lo, hi, open_lo }, default }
}
const fn int(name: &'static str, lo: i64, hi: i64, default: &'static str) -> Param {
    Param { name, kind: Kind::Int { lo, hi }, default }
}
const fn flag(name: &'static str) -> Param {
    Param { name, kind: Kind::Flag, default: "off" }
}

const BLOCK: Param = int("block", 1, 1 << 24, "4096");

/// Every codec the parser knows, in the order errors list them.
const CODECS: &[CodecInfo] = &[
    CodecInfo { name: "raw", params: &[], what: "lossless f32" },
    CodecInfo { name: "fp16", params: &[], what: "half precision" },
    CodecInfo { name: "bf16", params: &[], what: "bfloat16" },
    CodecInfo {
        name: "topk",
        params: &[real("ratio", 0.0, 1.0, true, "0.01"), flag("approx")],
        what: "largest |g|; approx = sampled threshold",
    },
    CodecInfo { name: "randomk", params: &[real("ratio", 0.0, 1.0, true, "0.01")], what: "random subset, seeded" },
    CodecInfo { name: "threshold", params: &[real("tau", 0.0, f32::MAX as f64, false, "0.01")], what: "|g| > tau" },
    CodecInfo { name: "onebit", params: &[BLOCK], what: "sign + per-block means of both signs" },
    CodecInfo { name: "signsgd", params: &[BLOCK], what: "sign + per-block mean |g|" },
    CodecInfo {
        name: "qsgd",
        params: &[int("levels", 1, 1 << 15, "16"), int("bucket", 1, 1 << 24, "512")],
        what: "stochastic levels, unbiased",
    },
    CodecInfo { name: "terngrad", params: &[int("bucket", 1, 1 << 24, "4096")], what: "stochastic ternary, unbiased" },
    CodecInfo {
        name: "sketchml",
        params: &[
            int("buckets", 2, 1 << 16, "64"),
            int("groups", 1, 1 << 16, "buckets"),
            int("rows", 1, 4, "2"),
            real("cols", 0.0, 8.0, true, "0.3"),
        ],
        what: "quantile buckets; groups < buckets puts them in a MinMaxSketch",
    },
    CodecInfo {
        name: "zstd",
        params: &[int("level", -7, 22, "3"), flag("shuffle")],
        what: "lossless stage after '|'; shuffle groups float bytes",
    },
];

/// Why a spec string did not parse. Its message ends with the list of valid codecs.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("codec spec {spec:?}: {why}\n{}", usage())]
pub struct SpecError {
    spec: String,
    why: String,
}

/// The registry as text: one line per codec with its parameters and defaults.
pub fn usage() -> String {
    let mut s = String::from("valid codecs (stages joined with '|', 'ef(...)' adds error feedback):");
    for c in CODECS {
        s.push_str("\n  ");
        s.push_str(c.name);
        if !c.params.is_empty() {
            let params: Vec<String> = c
                .params
                .iter()
                .map(|p| match p.kind {
                    Kind::Flag => format!("{} (flag)", p.name),
                    _ => format!("{}={}", p.name, p.default),
                })
                .collect();
            s.push(':');
            s.push_str(&params.join(","));
        }
        s.push_str("  -- ");
        s.push_str(c.what);
    }
    s.push_str("\n  e.g. ef(topk:0.01)|zstd:3, ef(onebit), sketchml:buckets=256, fp16");
    s
}

/// Parsed parameter values of one codec, by position in its registry entry.
struct Values {
    vals: Vec<Option<f64>>,
}

impl Values {
    fn real(&self, i: usize, default: f64) -> f64 {
        self.vals[i].unwrap_or(default)
    }
    fn int(&self, i: usize, default: u32) -> u32 {
        self.vals[i].map_or(default, |v| v as u32)
    }
    fn flag(&self, i: usize) -> bool {
        self.vals[i].is_some_and(|v| v != 0.0)
    }
}

fn parse_codec(text: &str) -> Result<CodecSpec, String> {
    let (name, args) = text.split_once(':').unwrap_or((text, ""));
    let Some(info) = CODECS.iter().find(|c| c.name == name) else {
        return Err(format!("unknown codec {name:?}"));
    };
    if info.name == "zstd" {
        return Err("zstd is a byte stage: put it after '|', e.g. raw|zstd:3".into());
    }
    let vals = parse_params(info, args)?;
    Ok(match name {
        "raw" => CodecSpec::Raw,
        "fp16" => CodecSpec::Fp16,
        "bf16" => CodecSpec::Bf16,
        "topk" => CodecSpec::TopK { ratio: vals.real(0, d::RATIO), approx: vals.flag(1) },
        "randomk" => CodecSpec::RandomK { ratio: vals.real(0, d::RATIO) },
        "threshold" => CodecSpec::Threshold { tau: vals.real(0, f64::from(d::TAU)) as f32 },
        "onebit" => CodecSpec::OneBit { block: vals.int(0, d::SIGN_BLOCK) },
        "signsgd" => CodecSpec::SignSgd { block: vals.int(0, d::SIGN_BLOCK) },
        "qsgd" => CodecSpec::Qsgd { levels: vals.int(0, d::QSGD_LEVELS), bucket: vals.int(1, d::QSGD_BUCKET) },
        "terngrad" => CodecSpec::TernGrad { bucket: vals.int(0, d::TERNGRAD_BUCKET) },
        "sketchml" => {
            let buckets = vals.int(0, d::SKETCH_BUCKETS);
            let groups = vals.int(1, buckets);
            if groups > buckets {
                return Err(format!("sketchml: groups ({groups}) must not exceed buckets ({buckets})"));
            }
            CodecSpec::SketchMl {
                buckets,
                groups,
                rows: vals.int(2, d::SKETCH_ROWS),
                cols: vals.real(3, d::SKETCH_COLS),
            }
        }
        _ => unreachable!("every registry entry has a constructor"),
    })
}

fn parse_params(info: &CodecInfo, args: &str) -> Result<Values, String> {
    let mut vals = vec![None; info.params.len()];
    if args.is_empty() {
        return Ok(Values { vals });
    }
    let mut next_positional = 0;
    for arg in args.split(',') {
        let (index, value) = if let Some((key, value)) = arg.split_once('=') {
            let Some(i) = info.params.iter().position(|p| p.name == key) else {
                return Err(format!("{} has no parameter {key:?}", info.name));
            };
            (i, value)
        } else if let Some(i) = info.params.iter().position(|p| p.name == arg && matches!(p.kind, Kind::Flag)) {
            (i, "1")
        } else {
            let Some(i) = (next_positional..info.params.len()).find(|&i| !matches!(info.params[i].kind, Kind::Flag))
            else {
                return Err(format!("{} takes no further positional parameter, got {arg:?}", info.name));
            };
            next_positional = i + 1;
            (i, arg)
        };
        let p = &info.params[index];
        if vals[index].is_some() {
            return Err(format!("{}: parameter {} given twice", info.name, p.name));
        }
        vals[index] = Some(check_value(info.name, p, value)?);
    }
    Ok(Values { vals })
}

fn check_value(codec: &str, p: &Param, value: &str) -> Result<f64, String> {
    let bad = |want: String| format!("{codec}: {}={value:?} must be {want}", p.name);
    match p.kind {
        Kind::Flag => match value {
            "1" | "true" | "on" => Ok(1.0),
            "0" | "false" | "off" => Ok(0.0),
            _ => Err(bad("true or false".into())),
        },
        Kind::Int { lo, hi } => match value.parse::<i64>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v as f64),
            _ => Err(bad(format!("an integer in [{lo}, {hi}]"))),
        },
        Kind::Real { lo, hi, open_lo } => {
            let ok = |v: f64| v.is_finite() && v <= hi && if open_lo { v > lo } else { v >= lo };
            match value.parse::<f64>() {
                Ok(v) if ok(v) => Ok(v),
                _ => Err(bad(format!("a number in {}{lo}, {hi}]", if open_lo { "(" } else { "[" }))),
            }
        }
    }
}

fn parse_value(text: &str) -> Result<CodecSpec, String> {
    if let Some(inner) = text.strip_prefix("ef(") {
        let Some(inner) = inner.strip_suffix(')') else {
            return Err("ef( is not closed by ')'".into());
        };
        let inner = parse_value(inner)?;
        return Ok(CodecSpec::ErrorFeedback(Box::new(inner)));
    }
    if text.contains(['(', ')']) {
        return Err(format!("unexpected parenthesis in {text:?}; only ef(...) takes one"));
    }
    parse_codec(text)
}

/// Splits at `|` outside parentheses.
fn split_stages(text: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut stages) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("')' without '('".into());
                }
            }
            '|' if depth == 0 => {
                stages.push(&text[start..i]);
                start = i + 1;
            }
            '|' => return Err("'|' inside ef(...): put byte stages after the closing ')'".into()),
            _ => {}
        }
    }
    stages.push(&text[start..]);
    Ok(stages)
}

impl FromStr for CodecSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let err = |why: String| SpecError { spec: text.to_owned(), why };
        if text.is_empty() {
            return Err(err("empty spec".into()));
        }
        if text.contains(char::is_whitespace) {
            return Err(err("whitespace is not allowed".into()));
        }
        let stages = split_stages(text).map_err(err)?;
        let mut spec = parse_value(stages[0]).map_err(err)?;
        for stage in &stages[1..] {
            let (name, args) = stage.split_once(':').unwrap_or((stage, ""));
            if name != "zstd" {
                return Err(err(format!("{stage:?} after '|' is not a byte stage; only zstd is")));
            }
            let info = CODECS.iter().find(|c| c.name == "zstd").expect("zstd is registered");
            let vals = parse_params(info, args).map_err(err)?;
            spec = Self::Zstd {
                inner: Box::new(spec),
                level: vals.vals[0].map_or(d::ZSTD_LEVEL, |v| v as i32),
                shuffle: vals.flag(1),
            };
        }
        Ok(spec)
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// One parameter as printed: its value, and whether it is the default (then omitted).
        struct P<'a> {
            key: &'a str,
            value: String,
            default: bool,
        }
        /// The name, then the non-default parameters: a leading `lead` parameter by position
        /// (always, even at its default: `topk:0.01` says more than `topk`), the others as
        /// `key=value`, and flags that are on by name.
        fn named(f: &mut fmt::Formatter<'_>, name: &str, lead: Option<String>, params: &[P<'_>]) -> fmt::Result {
            f.write_str(name)?;
            let mut sep = ':';
            if let Some(lead) = lead {
                write!(f, "{sep}{lead}")?;
                sep = ',';
            }
            for p in params.iter().filter(|p| !p.default) {
                if p.value.is_empty() {
                    write!(f, "{sep}{}", p.key)?
                } else {
                    write!(f, "{sep}{}={}", p.key, p.value)?
                }
                sep = ',';
            }
            Ok(())
        }
        let int = |key, v: u32, dv: u32| P { key, value: v.to_string(), default: v == dv };
        let flag = |key, on: bool| P { key, value: String::new(), default: !on };
        match self {
            Self::Raw => f.write_str("raw"),
            Self::Fp16 => f.write_str("fp16"),
            Self::Bf16 => f.write_str("bf16"),
            Self::TopK { ratio, approx } => named(f, "topk", Some(ratio.to_string()), &[flag("approx", *approx)]),
            Self::RandomK { ratio } => named(f, "randomk", Some(ratio.to_string()), &[]),
            Self::Threshold { tau } => named(f, "threshold", Some(tau.to_string()), &[]),
            Self::OneBit { block } => named(f, "onebit", None, &[int("block", *block, d::SIGN_BLOCK)]),
            Self::SignSgd { block } => named(f, "signsgd", None, &[int("block", *block, d::SIGN_BLOCK)]),
            Self::Qsgd { levels, bucket } => named(
                f,
                "qsgd",
                None,
                &[int("levels", *levels, d::QSGD_LEVELS), int("bucket", *bucket, d::QSGD_BUCKET)],
            ),
            Self::TernGrad { bucket } => named(f, "terngrad", None, &[int("bucket", *bucket, d::TERNGRAD_BUCKET)]),
            Self::SketchMl { buckets, groups, rows, cols } => named(
                f,
                "sketchml",
                None,
                &[
                    int("buckets", *buckets, d::SKETCH_BUCKETS),
                    int("groups", *groups, *buckets),
                    int("rows", *rows, d::SKETCH_ROWS),
                    P { key: "cols", value: cols.to_string(), default: *cols == d::SKETCH_COLS },
                ],
            ),
            Self::ErrorFeedback(inner) => write!(f, "ef({inner})"),
            Self::Zstd { inner, level, shuffle } => {
                write!(f, "{inner}|")?;
                named(f, "zstd", Some(level.to_string()), &[flag("shuffle", *shuffle)])
            }
        }
    }
}

impl CodecSpec {
    /// True when decoding gives back the encoder's input bit for bit.
    pub fn is_lossless(&self) -> bool {
        match self {
            Self::Raw => true,
            Self::Zstd { inner, .. } => inner.is_lossless(),
            _ => false,
        }
    }

    /// True when a stage is error feedback, whose residual belongs to one sender–receiver pair.
    pub fn has_error_feedback(&self) -> bool {
        match self {
            Self::ErrorFeedback(_) => true,
            Self::Zstd { inner, .. } => inner.has_error_feedback(),
            _ => false,
        }
    }

    /// True when the encoder keeps state between calls (residuals, random streams), so one
    /// encoder must be kept per tensor or table.
    pub fn is_stateful(&self) -> bool {
        match self {
            Self::ErrorFeedback(_) | Self::RandomK { .. } | Self::Qsgd { .. } | Self::TernGrad { .. } => true,
            Self::Zstd { inner, .. } => inner.is_stateful(),
            _ => false,
        }
    }
}

/// Specs travel through serde (job files) as their string form, checked by the same parser.
impl TryFrom<String> for CodecSpec {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<CodecSpec> for String {
    fn from(spec: CodecSpec) -> Self {
        spec.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_listed_pipeline_parses_and_prints_back() {
        for text in EVERY_CODEC {
            let spec: CodecSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), *text, "the list is written in canonical form");
        }
    }

    #[test]
    fn the_issue_examples_parse() {
        let spec: CodecSpec = "ef(topk:0.01)|zstd:3".parse().unwrap();
        assert_eq!(
            spec,
            CodecSpec::Zstd {
                inner: Box::new(CodecSpec::ErrorFeedback(Box::new(CodecSpec::TopK { ratio: 0.01, approx: false }))),
                level: 3,
                shuffle: false,
            }
        );
        assert_eq!("ef(onebit)".parse(), Ok(CodecSpec::ErrorFeedback(Box::new(CodecSpec::OneBit { block: 4096 }))));
        assert_eq!(
            "sketchml:buckets=256".parse(),
            Ok(CodecSpec::SketchMl { buckets: 256, groups: 256, rows: 2, cols: 0.3 })
        );
        assert_eq!("fp16".parse(), Ok(CodecSpec::Fp16));
        assert_eq!(
            "topk:0.05,approx".parse(),
            Ok(CodecSpec::TopK { ratio: 0.05, approx: true }),
            "a flag given by name"
        );
        assert_eq!(
            "raw|zstd:level=-1,shuffle".parse(),
            Ok(CodecSpec::Zstd { inner: Box::new(CodecSpec::Raw), level: -1, shuffle: true })
        );
        assert_eq!("qsgd:4,128".parse(), Ok(CodecSpec::Qsgd { levels: 4, bucket: 128 }));
    }

    #[test]
    fn errors_say_what_is_wrong_and_list_the_codecs() {
        for (spec, says) in [
            ("topq:0.1", "unknown codec \"topq\""),
            ("topk:2", "ratio=\"2\" must be a number in (0, 1]"),
            ("topk:0", "must be a number in (0, 1]"),
            ("topk:0.1,0.2", "no further positional"),
            ("topk:ratio=0.1,ratio=0.2", "given twice"),
            ("qsgd:levels=1.5", "an integer in [1, 32768]"),
            ("onebit:size=3", "onebit has no parameter \"size\""),
            ("ef(topk", "not closed"),
            ("ef(topk|zstd)", "inside ef"),
            ("zstd:3", "byte stage"),
            ("topk|fp16", "not a byte stage"),
            ("sketchml:groups=300", "must not exceed buckets"),
            ("", "empty"),
            ("fp16 |zstd", "whitespace"),
            ("fp16(x)", "parenthesis"),
        ] {
            let err = spec.parse::<CodecSpec>().unwrap_err().to_string();
            assert!(err.contains(says), "{spec:?} gave {err:?}, expected it to say {says:?}");
            assert!(err.contains("valid codecs") && err.contains("sketchml:buckets=64,groups=buckets"), "{err}");
        }
    }

    fn any_value() -> impl Strategy<Value = CodecSpec> {
        let leaf = prop_oneof![
            Just(CodecSpec::Raw),
            Just(CodecSpec::Fp16),
            Just(CodecSpec::Bf16),
            (1..=1000u32, any::<bool>())
                .prop_map(|(r, approx)| CodecSpec::TopK { ratio: f64::from(r) / 1000.0, approx }),
            (1..=1000u32).prop_map(|r| CodecSpec::RandomK { ratio: f64::from(r) / 1000.0 }),
            (0..1000u32).prop_map(|t| CodecSpec::Threshold { tau: t as f32 / 64.0 }),
            (1..10000u32).prop_map(|block| CodecSpec::OneBit { block }),
            (1..10000u32).prop_map(|block| CodecSpec::SignSgd { block }),
            (1..300u32, 1..5000u32).prop_map(|(levels, bucket)| CodecSpec::Qsgd { levels, bucket }),
            (1..5000u32).prop_map(|bucket| CodecSpec::TernGrad { bucket }),
            (2..1000u32, 1..9u32, 1..5u32, 1..80u32).prop_map(|(buckets, groups, rows, cols)| {
                CodecSpec::SketchMl { buckets, groups: groups.min(buckets), rows, cols: f64::from(cols) / 10.0 }
            }),
        ];
        (leaf, any::<bool>()).prop_map(|(s, ef)| if ef { CodecSpec::ErrorFeedback(Box::new(s)) } else { s })
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_spec_back(
            value in any_value(),
            zstd in proptest::option::of((-7..=22i32, any::<bool>())),
        ) {
            let spec = match zstd {
                Some((level, shuffle)) => CodecSpec::Zstd { inner: Box::new(value), level, shuffle },
                None => value,
            };
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<CodecSpec>(), Ok(spec), "{}", text);
        }

        #[test]
        fn parsing_never_panics(text in "[a-z0-9:,=.()|-]{0,40}") {
            let _ = text.parse::<CodecSpec>();
        }
    }
}
