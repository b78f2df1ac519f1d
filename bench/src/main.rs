//! Benchmarks of adjoint's generated gradients: each workload as the adjoint
//! gradient, a gradient written by hand with ndarray (the limit), and the primal
//! alone, checked to agree before they are timed in the same run.
//!
//! Run: `cargo run --release --manifest-path bench/Cargo.toml [filter] [profile]`

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

/// One workload's implementations.
pub struct Workload {
    pub name: &'static str,
    /// The key of the same workload in `jax_workloads.py` (`W1`..`W4`).
    pub key: &'static str,
    /// Sum and sum of squares of each of adjoint's gradients, to check JAX's against.
    pub checksums: Vec<[f64; 2]>,
    pub runs: usize,
    pub adjoint: Box<dyn FnMut()>,
    pub hand: Box<dyn FnMut()>,
    pub primal: Box<dyn FnMut()>,
    /// The same gradient in candle (`None` where candle cannot compute it).
    pub candle: Option<Box<dyn FnMut()>>,
    /// The same gradient in burn (`None` where burn cannot compute it).
    pub burn: Option<Box<dyn FnMut()>>,
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.2} us", s * 1e6)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

/// JAX's medians by workload key, from `jax_workloads.py`, after checking its
/// gradients' checksums against adjoint's; `None` when JAX is not installed.
fn jax_medians(
    filter: Option<&str>,
    workloads: &[(&'static str, Vec<[f64; 2]>)],
) -> Option<Vec<(String, f64)>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/jax_workloads.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(filter)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "JAX column skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let mut medians = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(median)) = (v["name"].as_str(), v["median"].as_f64()) else {
            continue;
        };
        let Some((_, ours)) = workloads.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        let theirs: Vec<[f64; 2]> = v["checksums"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                [
                    c[0].as_f64().unwrap_or(f64::NAN),
                    c[1].as_f64().unwrap_or(f64::NAN),
                ]
            })
            .collect();
        assert_eq!(
            theirs.len(),
            ours.len(),
            "{name}: JAX returned {} gradients",
            theirs.len()
        );
        for (t, o) in theirs.iter().zip(ours) {
            for k in 0..2 {
                let tol = 1e-9 * t[k].abs().max(o[k].abs()).max(1.0);
                assert!(
                    (t[k] - o[k]).abs() <= tol,
                    "{name}: JAX gradient checksum {} against adjoint's {}",
                    t[k],
                    o[k]
                );
            }
        }
        medians.push((name.to_string(), median));
    }
    Some(medians)
}

fn main() {
    let filter = std::env::args().nth(1);
    // `.. W5 profile`: run only adjoint's gradient of the matching workloads, for a
    // few seconds each, under a profiler (`perf record -e cpu-clock -g ..`).
    if std::env::args().nth(2).as_deref() == Some("profile") {
        for mut w in workloads::all() {
            if filter.as_deref().is_some_and(|f| !w.name.contains(f)) {
                continue;
            }
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < 5.0 {
                (w.adjoint)();
            }
        }
        return;
    }
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    for mut w in workloads::all() {
        if filter.as_deref().is_some_and(|f| !w.name.contains(f)) {
            continue;
        }
        keys.push((w.key, w.checksums.clone()));
        let mut fs: Vec<&mut dyn FnMut()> = vec![&mut w.adjoint, &mut w.hand, &mut w.primal];
        let peers = [w.candle.is_some(), w.burn.is_some()];
        fs.extend(w.candle.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut()));
        fs.extend(w.burn.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut()));
        let m = medians(&mut fs, w.runs);
        let (a, h, p) = (m[0], m[1], m[2]);
        let mut rest = m[3..].iter().copied();
        let c = peers[0].then(|| rest.next()).flatten();
        let bu = peers[1].then(|| rest.next()).flatten();
        let (ma, mh) = (peak_bytes(&mut w.adjoint), peak_bytes(&mut w.hand));
        rows.push((w.key, w.name, a, h, p, c, bu, ma, mh));
    }
    // JAX runs in its own process after the Rust implementations.
    let jax = jax_medians(filter.as_deref(), &keys);
    println!(
        "| workload | adjoint | hand-written | primal | candle | burn | JAX jit | adjoint / hand | gradient / primal | adjoint / candle | adjoint / burn | adjoint / JAX | peak memory (adjoint / hand) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // A peer that cannot compute the gradient shows "n/a"; JAX not installed, "-".
    let peer = |t: Option<f64>, a: f64, missing: &str| match t {
        Some(t) => (fmt_time(t), format!("{:.2}", a / t)),
        None => (missing.to_string(), missing.to_string()),
    };
    for (key, name, a, h, p, c, bu, ma, mh) in rows {
        let j = jax
            .as_ref()
            .and_then(|js| js.iter().find(|(k, _)| k == key).map(|(_, m)| *m));
        let ((ct, cr), (bt, br), (jt, jr)) =
            (peer(c, a, "n/a"), peer(bu, a, "n/a"), peer(j, a, "-"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {:.1} / {:.1} KiB |",
            name,
            fmt_time(a),
            fmt_time(h),
            fmt_time(p),
            ct,
            bt,
            jt,
            a / h,
            a / p,
            cr,
            br,
            jr,
            ma as f64 / 1024.0,
            mh as f64 / 1024.0
        );
    }
}
