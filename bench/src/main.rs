//! Benchmarks of adjoint's generated gradients: each workload as the adjoint
//! gradient, a gradient written by hand with ndarray (the limit), and the primal
//! alone, checked to agree before they are timed in the same run.
//!
//! Run: `cargo run --release --manifest-path bench/Cargo.toml [filter] [profile]`

mod burn_peer;
mod candle_peer;
mod workloads;

use std::time::Instant;

/// Median seconds per call of each implementation. Each runs a batch of calls and
/// returns the seconds per call; the implementations take turns in rounds, so a slow
/// spell of the machine touches all of them alike and their ratios stay meaningful.
fn medians(fs: &mut [&mut dyn FnMut(usize) -> f64], runs: usize) -> Vec<f64> {
    const ROUNDS: usize = 21;
    let batch = (runs / ROUNDS).max(1);
    for f in fs.iter_mut() {
        f(batch);
    }
    let mut times = vec![Vec::with_capacity(ROUNDS); fs.len()];
    // Each round starts with the next implementation, so that none always follows
    // the same one (JAX's process or a peer's thread pool winding down, caches
    // another left cold): in a fixed order the first one measured 10-15% slow.
    for round in 0..ROUNDS {
        for k in 0..fs.len() {
            let i = (round + k) % fs.len();
            times[i].push(fs[i](batch));
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

/// Seconds per call of `f` over `batch` calls.
fn timed(f: &mut dyn FnMut(), batch: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..batch {
        f();
    }
    start.elapsed().as_secs_f64() / batch as f64
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

/// JAX's `jit(value_and_grad)` of the workloads, in a Python process that times
/// rounds on request (`jax_workloads.py`), after its gradients' checksums matched
/// adjoint's; `None` when JAX is not installed.
struct Jax {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
    names: Vec<String>,
}

impl Jax {
    fn start(filter: Option<&str>, workloads: &[(&'static str, Vec<[f64; 2]>)]) -> Option<Jax> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/jax_workloads.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let input = child.stdin.take()?;
        let mut output = std::io::BufReader::new(child.stdout.take()?);
        let mut names = Vec::new();
        loop {
            let mut line = String::new();
            if output.read_line(&mut line).ok()? == 0 {
                eprintln!("JAX column skipped: the JAX process ended (is `jax` installed?)");
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            if v["ready"].as_bool() == Some(true) {
                break;
            }
            let name = v["name"].as_str()?.to_string();
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
            names.push(name);
        }
        Some(Jax {
            child,
            input,
            output,
            names,
        })
    }

    /// Seconds per gradient of workload `key` over `batch` gradients.
    fn time(&mut self, key: &str, batch: usize) -> f64 {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{key} {batch}").expect("JAX process");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("JAX process");
        line.trim().parse().expect("JAX timing")
    }
}

impl Drop for Jax {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
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
    let all = workloads::all();
    let selected: Vec<_> = all
        .into_iter()
        .filter(|w| filter.as_deref().is_none_or(|f| w.name.contains(f)))
        .collect();
    let keys: Vec<(&'static str, Vec<[f64; 2]>)> = selected
        .iter()
        .map(|w| (w.key, w.checksums.clone()))
        .collect();
    let mut jax = Jax::start(filter.as_deref(), &keys);
    let mut rows = Vec::new();
    for mut w in selected {
        let key = w.key;
        let mut own: Vec<&mut Box<dyn FnMut()>> = vec![&mut w.adjoint, &mut w.hand, &mut w.primal];
        let peers = [w.candle.is_some(), w.burn.is_some()];
        own.extend(w.candle.iter_mut());
        own.extend(w.burn.iter_mut());
        let mut fs: Vec<Box<dyn FnMut(usize) -> f64 + '_>> = own
            .into_iter()
            .map(|f| Box::new(move |b| timed(f.as_mut(), b)) as Box<dyn FnMut(usize) -> f64>)
            .collect();
        let with_jax = jax
            .as_ref()
            .is_some_and(|j| j.names.iter().any(|n| n == key));
        if let Some(j) = jax.as_mut().filter(|_| with_jax) {
            fs.push(Box::new(move |b| j.time(key, b)));
        }
        let mut refs: Vec<&mut dyn FnMut(usize) -> f64> = fs
            .iter_mut()
            .map(|f| f.as_mut() as &mut dyn FnMut(usize) -> f64)
            .collect();
        let m = medians(&mut refs, w.runs);
        drop(refs);
        drop(fs);
        let (a, h, p) = (m[0], m[1], m[2]);
        let mut rest = m[3..].iter().copied();
        let c = peers[0].then(|| rest.next()).flatten();
        let bu = peers[1].then(|| rest.next()).flatten();
        let j = with_jax.then(|| rest.next()).flatten();
        let (ma, mh) = (peak_bytes(&mut w.adjoint), peak_bytes(&mut w.hand));
        rows.push((w.name, a, h, p, c, bu, j, ma, mh));
    }
    println!(
        "| workload | adjoint | hand-written | primal | candle | burn | JAX jit | adjoint / hand | gradient / primal | adjoint / candle | adjoint / burn | adjoint / JAX | peak memory (adjoint / hand) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // A peer that cannot compute the gradient shows "n/a"; JAX not installed, "-".
    let peer = |t: Option<f64>, a: f64, missing: &str| match t {
        Some(t) => (fmt_time(t), format!("{:.2}", a / t)),
        None => (missing.to_string(), missing.to_string()),
    };
    for (name, a, h, p, c, bu, j, ma, mh) in rows {
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
