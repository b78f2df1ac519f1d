//! The large run of random programs: generates `--programs N` (default 1000) in
//! batches, compiles each batch as a crate beside the workspace
//! (`target/fuzz-run`), and counts what happened to each program: compiled and
//! right, rejected by the macro with a spanned error (it said no at the user's
//! tokens), an error in the generated code (a bug), a wrong gradient (a bug), or a
//! panic (a bug).
//!
//! ```text
//! cargo run -p adjoint-fuzz --release -- --programs 3000 --seed 1
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const BATCH: usize = 100;

fn main() {
    let mut programs = 1000;
    let mut seed = 1u64;
    let mut modules = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--programs", Some(v)) => programs = v as usize,
            ("--seed", Some(v)) => seed = v,
            ("--modules", Some(v)) => modules = Some(v as usize),
            _ => {
                eprintln!("usage: adjoint-fuzz [--programs N] [--modules M] [--seed S]");
                std::process::exit(2);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target").join("fuzz-run");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    // A quarter of the programs are module programs unless told.
    let modules = modules.unwrap_or(programs / 4).min(programs);
    let batches = programs.div_ceil(BATCH);
    for b in 0..batches {
        let n = BATCH.min(programs - b * BATCH);
        let batch_seed = seed.wrapping_mul(1_000_003).wrapping_add(b as u64);
        // The module programs spread over the batches as the programs do.
        let m = modules * (b * BATCH + n) / programs - modules * (b * BATCH) / programs;
        let outcome = run_batch(&root, &dir, batch_seed, n, m);
        for (k, v) in outcome.counts {
            *counts.entry(k).or_default() += v;
        }
        examples.extend(outcome.examples);
        eprintln!("batch {}/{batches}: {counts:?}", b + 1);
    }
    println!("programs: {programs}, {modules} of them module programs (seed {seed})");
    for (k, v) in &counts {
        println!("{k}: {v}");
    }
    for e in examples.iter().take(20) {
        println!("  {e}");
    }
    let bugs = counts.get("generated code error").copied().unwrap_or(0)
        + counts.get("wrong").copied().unwrap_or(0)
        + counts.get("panic").copied().unwrap_or(0);
    std::process::exit(if bugs == 0 { 0 } else { 1 });
}

struct Outcome {
    counts: BTreeMap<&'static str, usize>,
    examples: Vec<String>,
}

/// One batch: compile, drop the programs that do not compile (classifying why),
/// compile again, run, count.
fn run_batch(root: &Path, dir: &Path, seed: u64, n: usize, modules: usize) -> Outcome {
    let mut counts = BTreeMap::new();
    let mut examples = Vec::new();
    let src = adjoint_fuzz::program_file(seed, n, modules, true);
    let mut excluded = std::collections::BTreeSet::new();
    // The last batch's program must not run for this one when this one does not
    // build.
    let binary = dir.join("target/release/fuzz-run");
    // Type errors first, then borrow errors: a few rounds.
    for _attempt in 0..6 {
        let _ = std::fs::remove_file(&binary);
        let text = exclude(&src, &excluded);
        write_crate(root, dir, &text);
        let errors = build(dir);
        if errors.is_empty() {
            break;
        }
        for (line, code, message) in errors {
            let Some(p) = program_at(&text, line) else {
                continue;
            };
            if excluded.insert(p) {
                let kind = if code.is_some() {
                    "generated code error"
                } else {
                    "rejected with a spanned error"
                };
                *counts.entry(kind).or_default() += 1;
                if code.is_some() {
                    examples.push(format!("program{p} (seed {seed}): {message}"));
                }
            }
        }
    }
    if !binary.exists() {
        // Not built, and no error in the programs to blame: the runtime or the
        // harness does not compile (a bug, the whole batch's).
        *counts.entry("generated code error").or_default() += n - excluded.len();
        examples.push(format!(
            "(seed {seed}) the batch does not build; see {}",
            dir.display()
        ));
        return Outcome { counts, examples };
    }
    let output = Command::new(&binary)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut wrong = 0;
    let mut panics = 0;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("WRONG ") {
            wrong += 1;
            examples.push(format!("(seed {seed}) {rest}"));
        } else if let Some(rest) = line.strip_prefix("PANIC ") {
            panics += 1;
            examples.push(format!("(seed {seed}) panic in {rest}"));
        }
    }
    let checked = n - excluded.len();
    *counts.entry("compiled").or_default() += checked;
    *counts.entry("wrong").or_default() += wrong;
    *counts.entry("panic").or_default() += panics;
    Outcome { counts, examples }
}

/// The source without the programs in `excluded`: their functions (from the
/// `// programN` line before each to its closing brace) and their checks.
fn exclude(src: &str, excluded: &std::collections::BTreeSet<usize>) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in src.lines() {
        if let Some(p) = line
            .strip_prefix("// program")
            .and_then(|n| n.parse::<usize>().ok())
        {
            skipping = excluded.contains(&p);
        }
        let guard_of = line
            .trim_start()
            .strip_prefix("guard(\"program")
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse::<usize>().ok());
        if guard_of.is_some_and(|p| excluded.contains(&p)) {
            continue;
        }
        if skipping {
            if line == "}" {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The program whose function holds line `line` (1-based) of `text`: the nearest
/// `// programN` marker above it, if no other item started in between.
fn program_at(text: &str, line: usize) -> Option<usize> {
    let mut current = None;
    for l in text.lines().take(line) {
        if let Some(p) = l
            .strip_prefix("// program")
            .and_then(|n| n.parse::<usize>().ok())
        {
            current = Some(p);
        } else if l.starts_with("fn helper") || l.starts_with("type ") || l.starts_with("fn guard")
        {
            current = None;
        }
    }
    current
}

fn write_crate(root: &Path, dir: &Path, main: &str) {
    let _ = std::fs::create_dir_all(dir.join("src"));
    let runtime = root.join("runtime");
    let manifest = format!(
        "[package]\nname = \"fuzz-run\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\nadjoint = {{ path = {:?} }}\nndarray = \"0.17\"\n\n[workspace]\n",
        runtime.canonicalize().unwrap_or(runtime.clone())
    );
    let main = format!("#![allow(unused_parens, unused_variables, unused_mut)]\n{main}");
    let _ = std::fs::write(dir.join("Cargo.toml"), manifest);
    let _ = std::fs::write(dir.join("src/main.rs"), main);
}

/// Builds the crate; the errors as (line, code, message).
fn build(dir: &Path) -> Vec<(usize, Option<String>, String)> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--message-format=json"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut errors = Vec::new();
    for line in stdout.lines() {
        // A small reading of cargo's JSON: enough for level, code, message, line.
        if !line.contains("\"level\":\"error\"")
            || !line.contains("\"reason\":\"compiler-message\"")
        {
            continue;
        }
        let field = |key: &str| -> Option<String> {
            let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
            let rest = &line[start..];
            if rest.starts_with("null") {
                return None;
            }
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        };
        let code = line
            .find("\"code\":{\"code\":\"")
            .map(|i| line[i + 16..i + 21].to_string());
        let message = field("rendered")
            .map(|r| r.split("\\n").next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let lines: Vec<usize> = line
            .match_indices("\"line_start\":")
            .filter_map(|(i, _)| {
                line[i + 13..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let in_main = line.contains("\"file_name\":\"src/main.rs\"");
        if let (true, Some(&l)) = (in_main, lines.first()) {
            let _ = field("message");
            errors.push((l, code, message));
        }
    }
    errors
}
