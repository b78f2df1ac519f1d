#!/usr/bin/env bash
# Compile time of #[differentiable]: a ~360-line model (20 functions with arrays,
# a loop, a branch, reductions) built with the attribute, with `(jvp)` (forward
# mode, its JVP differentiable again, and the Jacobian companions) and without,
# debug and release, timing a rebuild of the model crate only (the fastest of six).
# Run: bash bench/compile_time.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
fns = []
for k in range(20):
    fns.append(f'''
#[differentiable]
pub fn layer{k}(w: &Array2<f64>, b: &Array1<f64>, x: &Array2<f64>, s: f64) -> f64 {{
    let h = (x.dot(w) + b).tanh();
    let g = relu(&(&h * s));
    let mut acc = 0.0;
    for i in 0..g.nrows() {{
        let r = g.row(i);
        let v = r.sum() * s + (i as f64);
        if v > 0.5 {{
            acc += v * v;
        }} else {{
            acc += v.exp() - 1.0;
        }}
    }}
    let m = g.mean_axis(Axis(0)).unwrap();
    acc + (&m * &m).sum() + log_softmax(&h, Axis(1)).sum() * 0.01
}}
''')
body = "use adjoint::prelude::*;\nuse ndarray::{Array1, Array2, Axis};\n" + "".join(fns)
open(f"{work}/with.rs", "w").write(body)
open(f"{work}/without.rs", "w").write(body.replace("#[differentiable]\n", ""))
open(f"{work}/jvp.rs", "w").write(body.replace("#[differentiable]\n", "#[differentiable(jvp)]\n"))
print(f"model: {len(body.splitlines())} lines")
PY
for v in with jvp without; do
  mkdir -p "$work/$v/src"
  cp "$work/$v.rs" "$work/$v/src/lib.rs"
  cat > "$work/$v/Cargo.toml" <<TOML
[package]
name = "ct_$v"
version = "0.1.0"
edition = "2024"
[dependencies]
adjoint = { path = "$root/runtime" }
ndarray = "0.17"
[workspace]
TOML
done
# The fastest of six rebuilds: the shared host's speed drifts.
for profile in dev release; do
  for v in with jvp without; do
    (cd "$work/$v" && cargo build -q --profile "$profile" 2>/dev/null &&
      best=
      for _ in 1 2 3 4 5 6; do
        touch src/lib.rs
        start=$(date +%s.%N)
        cargo build -q --profile "$profile"
        t=$(echo "$(date +%s.%N) - $start" | bc)
        if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
      done
      printf '%s #[differentiable], %s: %.2f s\n' "$v" "$profile" "$best")
  done
done
