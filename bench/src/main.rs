//! Benchmarks of adjoint's generated gradients: each workload as the adjoint
//! gradient, a gradient written by hand with ndarray (the limit), and the primal
//! alone, checked to agree before they are timed in the same run.
//!
//! Run: `cargo run --release --manifest-path bench/Cargo.toml`

mod burn_peer;
mod candle_peer;
mod workloads;

use std::time::Instant;

/// Median seconds per call of each function. The functions take turns in rounds
/// (a batch of calls each), so a slow spell of the machine touches all of them
/// alike and their ratios stay meaningful.
fn medians(fs: &mut [&mut dyn FnMut()], runs: usize) -> Vec<f64> {
    const ROUNDS: usize = 21;
    let batch = (runs / ROUNDS).max(1);
    for f in fs.iter_mut() {
        for _ in 0..batch {
            f();
        }
    }
    let mut times = vec![Vec::with_capacity(ROUNDS); fs.len()];
    for _ in 0..ROUNDS {
        for (f, t) in fs.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.push(start.elapsed().as_secs_f64() / batch as f64);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(|a, b| a.total_cmp(b));
            t[t.len() / 2]
        })
        .collect()
}

/// Peak bytes allocated at once during one call.
fn peak_bytes(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).bytes_max
}

/// One workload's three implementations.
pub struct Workload {
    pub name: &'static str,
    pub runs: usize,
    pub adjoint: Box<dyn FnMut()>,
    pub hand: Box<dyn FnMut()>,
    pub primal: Box<dyn FnMut()>,
    /// The same gradient in candle.
    pub candle: Box<dyn FnMut()>,
    /// The same gradient in burn.
    pub burn: Box<dyn FnMut()>,
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 { format!("{:.2} us", s * 1e6) } else { format!("{:.3} ms", s * 1e3) }
}

fn main() {
    let filter = std::env::args().nth(1);
    println!("| workload | adjoint | hand-written | primal | candle | burn | adjoint / hand | gradient / primal | adjoint / candle | adjoint / burn | peak memory (adjoint / hand) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for mut w in workloads::all() {
        if filter.as_deref().is_some_and(|f| !w.name.contains(f)) {
            continue;
        }
        let m = medians(&mut [&mut w.adjoint, &mut w.hand, &mut w.primal, &mut w.candle, &mut w.burn], w.runs);
        let (a, h, p, c, bu) = (m[0], m[1], m[2], m[3], m[4]);
        let (ma, mh) = (peak_bytes(&mut w.adjoint), peak_bytes(&mut w.hand));
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} KiB |",
            w.name,
            fmt_time(a),
            fmt_time(h),
            fmt_time(p),
            fmt_time(c),
            fmt_time(bu),
            a / h,
            a / p,
            a / c,
            a / bu,
            ma as f64 / 1024.0,
            mh as f64 / 1024.0
        );
    }
}
