//! Integration tests: one binary, one module per area (ripgrep's layout; links once on 2 cores).

mod bad_input;
mod codecs;
mod hosts;
mod local;
mod processes;
mod strategies;
mod switch;
mod util;
mod word2vec;
mod word2vec_corpus;
mod word2vec_eval;
