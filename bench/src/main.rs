//! Benchmarks of adjoint's generated gradients: each workload as the adjoint
//! gradient, a gradient written by hand with ndarray (the limit), and the primal
//! alone, checked to agree before they are timed in the same run.
//!
//! Run: `cargo run --release --manifest-path bench/Cargo.toml [filter] [profile]`

mod burn_peer;
mod candle_peer;
mod layer_workloads;
mod optim_workloads;
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

/// The sum, the sum of squares and the sum of magnitudes of a gradient: what JAX's
/// are checked against.
pub fn checksum<A: Copy + Into<f64>, D: ndarray::Dimension>(a: &ndarray::Array<A, D>) -> [f64; 3] {
    let mut c = [0.0; 3];
    for &v in a {
        let v: f64 = v.into();
        c[0] += v;
        c[1] += v * v;
        c[2] += v.abs();
    }
    c
}

/// Whether JAX's checksums `theirs` agree with adjoint's `ours` to `tol`: the sum
/// relative to the sum of magnitudes (a sum may cancel to nearly zero), the others
/// relative to themselves; but no scale below [`NOISE_FLOOR`] of the workload's
/// largest gradient (`largest`: its sum of magnitudes and sum of squares), since a
/// gradient that is zero in exact arithmetic (attention's key bias) is rounding
/// noise in both.
fn checksums_agree(theirs: [f64; 3], ours: [f64; 3], tol: f64, largest: [f64; 2]) -> bool {
    let floor = [
        NOISE_FLOOR * largest[0],
        NOISE_FLOOR * NOISE_FLOOR * largest[1],
        NOISE_FLOOR * largest[0],
    ];
    let scale = [ours[2], ours[1], ours[2]];
    (0..3)
        .all(|k| (theirs[k] - ours[k]).abs() <= tol * scale[k].max(floor[k]).max(f64::MIN_POSITIVE))
}

/// Below this fraction of a workload's largest gradient (normwise), a gradient is
/// compared as noise: see [`checksums_agree`].
pub const NOISE_FLOOR: f64 = 1e-3;

/// One workload's implementations.
pub struct Workload {
    pub name: &'static str,
    /// The key of the same workload in `jax_workloads.py` (`W1`..`W7`).
    pub key: &'static str,
    /// [`checksum`] of each of adjoint's gradients, to check JAX's against.
    pub checksums: Vec<[f64; 3]>,
    /// How closely JAX's checksums must agree (1e-9 in f64, 1e-4 in f32).
    pub tolerance: f64,
    pub runs: usize,
    pub adjoint: Box<dyn FnMut()>,
    /// The gradient written by hand (`None` where that is not worth writing).
    pub hand: Option<Box<dyn FnMut()>>,
    /// The primal alone (`None` where there is no primal: an optimizer step).
    pub primal: Option<Box<dyn FnMut()>>,
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
    fn start(
        filter: Option<&str>,
        workloads: &[(&'static str, Vec<[f64; 3]>, f64)],
    ) -> Option<Jax> {
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
            let Some((_, ours, tol)) = workloads.iter().find(|(k, ..)| *k == name) else {
                continue;
            };
            let theirs: Vec<[f64; 3]> = v["checksums"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| std::array::from_fn(|k| c[k].as_f64().unwrap_or(f64::NAN)))
                .collect();
            assert_eq!(
                theirs.len(),
                ours.len(),
                "{name}: JAX returned {} gradients",
                theirs.len()
            );
            let largest = ours
                .iter()
                .fold([0.0f64; 2], |m, o| [m[0].max(o[2]), m[1].max(o[1])]);
            for (t, o) in theirs.iter().zip(ours) {
                assert!(
                    checksums_agree(*t, *o, *tol, largest),
                    "{name}: JAX's gradient checksums {t:?} against adjoint's {o:?}"
                );
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

fn all_workloads() -> Vec<Workload> {
    let mut all = workloads::all();
    all.extend(layer_workloads::all());
    all.extend(optim_workloads::all());
    all
}

fn main() {
    let filter = std::env::args().nth(1);
    // `.. W5 profile`: run only adjoint's gradient of the matching workloads, for a
    // few seconds each, under a profiler (`perf record -e cpu-clock -g ..`).
    if std::env::args().nth(2).as_deref() == Some("profile") {
        for mut w in all_workloads() {
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
    let selected: Vec<_> = all_workloads()
        .into_iter()
        .filter(|w| filter.as_deref().is_none_or(|f| w.name.contains(f)))
        .collect();
    let keys: Vec<(&'static str, Vec<[f64; 3]>, f64)> = selected
        .iter()
        .map(|w| (w.key, w.checksums.clone(), w.tolerance))
        .collect();
    let mut jax = Jax::start(filter.as_deref(), &keys);
    let mut rows = Vec::new();
    for mut w in selected {
        let key = w.key;
        // adjoint, then those present: primal, hand-written, candle, burn, JAX.
        let mut own: Vec<&mut Box<dyn FnMut()>> = vec![&mut w.adjoint];
        let present = [
            w.primal.is_some(),
            w.hand.is_some(),
            w.candle.is_some(),
            w.burn.is_some(),
        ];
        own.extend(w.primal.iter_mut());
        own.extend(w.hand.iter_mut());
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
        let a = m[0];
        let mut rest = m[1..].iter().copied();
        let [p, h, c, bu] = present.map(|yes| yes.then(|| rest.next()).flatten());
        let j = with_jax.then(|| rest.next()).flatten();
        let ma = peak_bytes(&mut w.adjoint);
        let mh = w.hand.as_mut().map(peak_bytes);
        rows.push((w.name, a, h, p, c, bu, j, ma, mh));
    }
    println!(
        "| workload | adjoint | hand-written | primal | candle | burn | JAX jit | adjoint / hand | gradient / primal | adjoint / candle | adjoint / burn | adjoint / JAX | peak memory (adjoint / hand) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // A peer that cannot compute the gradient shows "n/a"; JAX not installed or no
    // hand-written gradient, "-".
    let peer = |t: Option<f64>, a: f64, missing: &str| match t {
        Some(t) => (fmt_time(t), format!("{:.2}", a / t)),
        None => (missing.to_string(), missing.to_string()),
    };
    for (name, a, h, p, c, bu, j, ma, mh) in rows {
        let ((pt, pr), (ht, hr), (ct, cr), (bt, br), (jt, jr)) = (
            peer(p, a, "-"),
            peer(h, a, "-"),
            peer(c, a, "n/a"),
            peer(bu, a, "n/a"),
            peer(j, a, "-"),
        );
        let kib = |b: u64| format!("{:.1}", b as f64 / 1024.0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} KiB |",
            name,
            fmt_time(a),
            ht,
            pt,
            ct,
            bt,
            jt,
            hr,
            pr,
            cr,
            br,
            jr,
            kib(ma),
            mh.map_or("-".to_string(), kib)
        );
    }
}
