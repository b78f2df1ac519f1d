//! Benchmarks of adjoint's generated gradients: each workload as the adjoint
//! gradient, a gradient written by hand with ndarray (the limit), and the primal
//! alone, checked to agree before they are timed in the same run.
//!
//! Run: `cargo run --release --manifest-path bench/Cargo.toml`

mod workloads;

use std::time::Instant;

/// Median seconds per call over `runs` calls, after warming up.
fn median(mut f: impl FnMut(), runs: usize) -> f64 {
    for _ in 0..runs.div_ceil(10).max(3) {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
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
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 { format!("{:.2} us", s * 1e6) } else { format!("{:.3} ms", s * 1e3) }
}

fn main() {
    let filter = std::env::args().nth(1);
    println!("| workload | adjoint | hand-written | primal | adjoint / hand | gradient / primal | peak memory (adjoint / hand) |");
    println!("|---|---|---|---|---|---|---|");
    for mut w in workloads::all() {
        if filter.as_deref().is_some_and(|f| !w.name.contains(f)) {
            continue;
        }
        let a = median(&mut w.adjoint, w.runs);
        let h = median(&mut w.hand, w.runs);
        let p = median(&mut w.primal, w.runs);
        let (ma, mh) = (peak_bytes(&mut w.adjoint), peak_bytes(&mut w.hand));
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.1} / {:.1} KiB |",
            w.name,
            fmt_time(a),
            fmt_time(h),
            fmt_time(p),
            a / h,
            a / p,
            ma as f64 / 1024.0,
            mh as f64 / 1024.0
        );
    }
}
