//! Integration tests of paramserv-switch, one binary (STYLE habit 13).

mod sim;
mod udp;
