//! Integration tests of paramserv-switch, one binary (STYLE habit 13).

mod cli;
mod netns;
mod sim;
mod udp;
