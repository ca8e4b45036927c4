//! paramserv-codecs on its own, in a trainer that is not paramserv: each of two workers compresses
//! its gradient with error feedback, the bytes travel however the trainer likes (here: a Vec), and
//! the receiver decodes and adds them into its weights.
//!
//! `cargo run -p paramserv-codecs --example standalone`

use paramserv_codecs::{Pipeline, decode_add};

fn main() {
    let dim = 1 << 20;
    let mut weights = vec![0.0f32; dim];
    // One encoder per worker and tensor: it keeps that tensor's residual between steps.
    let mut encoders: Vec<Pipeline> = (0..2).map(|_| Pipeline::parse("ef(topk:0.01)|zstd:3").unwrap()).collect();
    for step in 0..3 {
        for (w, encoder) in encoders.iter_mut().enumerate() {
            let grad: Vec<f32> =
                (0..dim).map(|i| (((i * 31 + w * 7 + step) % 1000) as f32 / 500.0 - 1.0) * 1e-2).collect();
            let mut payload = Vec::new();
            encoder.encode(&grad, &mut payload); // ship `payload` any way you like
            decode_add(&payload, -0.1, &mut weights).expect("a payload from our own encoder");
            println!(
                "step {step} worker {w}: {} bytes instead of {} ({:.0}x)",
                payload.len(),
                dim * 4,
                (dim * 4) as f64 / payload.len() as f64
            );
        }
    }
    println!("|w| = {:.4}", weights.iter().map(|w| w * w).sum::<f32>().sqrt());
}
