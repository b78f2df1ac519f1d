//! Random differentiable programs, to keep the transform honest: a generator of
//! well-typed Rust functions over `f64` scalars and arrays (arithmetic, elementwise
//! maths, reductions, `dot`, indexing, `mapv` closures reading enclosing values,
//! `for` loops carrying values, branches, calls of helpers), and a harness that
//! checks each one's `grad!` against central differences and, where forward mode
//! covers it, against its `jvp!`. Module programs (`module_program`) put a random
//! body in a module whose lifted `grad!` a parent differentiates again: reverse over
//! reverse (the transposer's input gradient, written back as source) is checked
//! against the rerun's and against central differences.
//!
//! `tests/build.rs` writes a few dozen into the test suite (`cargo test`); `cargo run
//! -p adjoint-fuzz --release -- --programs 3000` generates, compiles and runs
//! thousands and prints the counts (see the crate's `main.rs`).

use std::fmt::Write;

/// A small deterministic generator (SplitMix64): the same seed, the same programs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A literal in `[-1.5, 1.5]` with one decimal.
    fn lit(&mut self) -> String {
        let v = self.below(31) as i64 - 15;
        format!("{:.1}", v as f64 / 10.0)
    }
}

/// The length of every array the programs use.
pub const LEN: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Scalar,
    Array,
}

/// One function being generated: its variables by type.
struct Gen<'r> {
    rng: &'r mut Rng,
    scalars: Vec<String>,
    arrays: Vec<String>,
    next: usize,
    /// Whether forward mode covers the body (calls only of helpers it covers).
    forward: bool,
    depth: usize,
}

/// Elementwise functions that are smooth and bounded near the inputs used.
const SMOOTH: &[&str] = &["sin", "cos", "tanh"];

impl Gen<'_> {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn scalar_var(&mut self) -> String {
        self.rng.pick(&self.scalars).clone()
    }

    fn array_var(&mut self) -> String {
        self.rng.pick(&self.arrays).clone()
    }

    /// An array variable as a reference: the parameters `a`, `b` are references
    /// already, the locals are borrowed.
    fn array_ref(&mut self) -> String {
        let v = self.array_var();
        if v == "a" || v == "b" {
            v
        } else {
            format!("&{v}")
        }
    }

    /// A scalar expression.
    fn scalar(&mut self) -> String {
        self.depth += 1;
        let leaf = self.depth > 3;
        let e = match if leaf {
            self.rng.below(2)
        } else {
            self.rng.below(12)
        } {
            0 => self.scalar_var(),
            1 => format!("{} * {}", self.scalar_var(), self.rng.lit()),
            2 => format!("({} + {})", self.scalar(), self.scalar()),
            3 => format!("({} - {})", self.scalar(), self.scalar()),
            4 => format!("({} * {})", self.scalar(), self.scalar()),
            5 => format!(
                "({} / (1.0 + {} * {}))",
                self.scalar(),
                {
                    let v = self.scalar_var();
                    v.clone()
                },
                self.scalar_var()
            ),
            6 => {
                let f = self.rng.pick(SMOOTH);
                format!("({}).{f}()", self.scalar())
            }
            7 => format!("{}.sum()", self.array()),
            8 => format!("{}[{}]", self.array_var(), self.rng.below(LEN)),
            9 => {
                let (a, b) = (self.array_var(), self.array_ref());
                format!("{a}.dot({b})")
            }
            10 => format!("({}).powi({})", self.scalar(), 2 + self.rng.below(2)),
            _ => format!("{}.mean().unwrap()", self.array()),
        };
        self.depth -= 1;
        e
    }

    /// An array expression (an owned array or a reference to one).
    fn array(&mut self) -> String {
        self.depth += 1;
        let leaf = self.depth > 3;
        let e = match if leaf { 0 } else { self.rng.below(8) } {
            0 => format!("({} * {})", self.array_ref(), self.rng.lit()),
            1 => format!("({} + {})", self.array_ref(), self.array_ref()),
            2 => format!("({} * {})", self.array_ref(), self.array_ref()),
            3 => format!("({} - {})", self.array_ref(), self.scalar()),
            4 => format!("({} * {})", self.scalar(), self.array_ref()),
            5 => {
                let f = self.rng.pick(SMOOTH);
                format!("{}.{f}()", self.array_var())
            }
            6 => {
                // A closure reading an enclosing scalar, which may be differentiated.
                let c = self.scalar_var();
                let f = self.rng.pick(SMOOTH);
                format!(
                    "{}.mapv(|v| (v * {c}).{f}() + v * {})",
                    self.array_var(),
                    self.rng.lit()
                )
            }
            _ => {
                format!("{}.mapv(|v| v * v + {})", self.array_var(), self.rng.lit())
            }
        };
        self.depth -= 1;
        e
    }

    fn expr(&mut self, ty: Ty) -> String {
        self.depth = 0;
        match ty {
            Ty::Scalar => self.scalar(),
            Ty::Array => self.array(),
        }
    }

    /// One statement (or a few), appended to `out`.
    /// `helpers[h]`: whether forward mode covers helper `h` (it is `(jvp)`).
    fn stmt(&mut self, out: &mut String, helpers: &[bool]) {
        match self.rng.below(10) {
            0..=3 => {
                let v = self.fresh("s");
                let e = self.expr(Ty::Scalar);
                let _ = writeln!(out, "    let {v} = {e};");
                self.scalars.push(v);
            }
            4 | 5 => {
                let v = self.fresh("a");
                let e = self.expr(Ty::Array);
                let _ = writeln!(out, "    let {v} = {e};");
                self.arrays.push(v);
            }
            6 => {
                // A branch on a differentiated value: both arms are smooth.
                let v = self.fresh("s");
                let c = self.scalar_var();
                let (t, e) = (self.expr(Ty::Scalar), self.expr(Ty::Scalar));
                // The threshold is off the grid of the inputs (multiples of 0.1), so
                // central differences do not straddle it.
                let _ = writeln!(
                    out,
                    "    let {v} = if {c} > 0.0731 {{ {t} }} else {{ {e} }};"
                );
                self.scalars.push(v);
            }
            7 => {
                // A loop carrying a scalar and an array.
                let (s, a) = (self.fresh("s"), self.fresh("a"));
                let (s0, a0) = (self.scalar_var(), self.array_var());
                let k = self.fresh("k");
                let _ = writeln!(out, "    let mut {s} = {s0};");
                let _ = writeln!(out, "    let mut {a} = {a0}.to_owned();");
                let _ = writeln!(out, "    for {k} in 0..{} {{", 2 + self.rng.below(3));
                let f = *self.rng.pick(SMOOTH);
                let _ = writeln!(out, "        {s} = ({s} * 0.5 + {a}[{k} % {LEN}]).{f}();");
                let _ = writeln!(out, "        {a} = (&{a} * {s}).{f}();");
                let _ = writeln!(out, "    }}");
                self.scalars.push(s);
                self.arrays.push(a);
            }
            8 if !helpers.is_empty() => {
                let v = self.fresh("s");
                let h = self.rng.below(helpers.len());
                self.forward &= helpers[h];
                let (x, a) = (self.scalar_var(), self.array_ref());
                let _ = writeln!(out, "    let {v} = helper{h}({x}, {a});");
                self.scalars.push(v);
            }
            _ => {
                let v = self.fresh("s");
                let e = self.expr(Ty::Scalar);
                let _ = writeln!(out, "    let {v} = {e};");
                self.scalars.push(v);
            }
        }
    }
}

/// Which modules an expression of a module body may call: `Dense`, and the
/// submodule `Inner` in `Field`'s body; none in a module call's arguments (`cx` is
/// borrowed by the call).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    None,
    Dense,
    DenseAndInner,
}

impl Gen<'_> {
    /// A scalar expression of a module body: mostly what the transposer writes
    /// back as source (sums, products, quotients, squares, negation, `tanh`, `sin`,
    /// `cos`, `exp`, `ln`, `sum`, `mean`), now and then what it does not (indexing,
    /// `dot`, `powi`), whose module then falls back to its first-order reverse mode.
    fn module_scalar(&mut self, calls: Calls) -> String {
        self.depth += 1;
        let leaf = self.depth > 3;
        let pick = if leaf {
            self.rng.below(2)
        } else if self.rng.chance(8) {
            13 + self.rng.below(3)
        } else {
            self.rng.below(13)
        };
        let e = match pick {
            0 => self.scalar_var(),
            1 => format!("{} * {}", self.scalar_var(), self.rng.lit()),
            2 => format!(
                "({} + {})",
                self.module_scalar(calls),
                self.module_scalar(calls)
            ),
            3 => format!(
                "({} - {})",
                self.module_scalar(calls),
                self.module_scalar(calls)
            ),
            4 => format!(
                "({} * {})",
                self.module_scalar(calls),
                self.module_scalar(calls)
            ),
            5 => {
                let v = self.scalar_var();
                format!("({} / (1.0 + {v} * {v}))", self.module_scalar(calls))
            }
            6 => {
                let f = self.rng.pick(SMOOTH);
                format!("({}).{f}()", self.module_scalar(calls))
            }
            7 => format!("({}).sum()", self.module_array(calls)),
            8 => format!("({}).mean().unwrap()", self.module_array(calls)),
            9 => format!("({}).tanh().exp()", self.module_scalar(calls)),
            10 => {
                let v = self.scalar_var();
                format!("(1.0 + {v} * {v}).ln()")
            }
            11 => {
                let v = self.scalar_var();
                format!("{v} * {v}")
            }
            12 => format!("-({})", self.module_scalar(calls)),
            13 => format!("{}[{}]", self.array_var(), self.rng.below(LEN)),
            14 => {
                let (a, b) = (self.array_var(), self.array_ref());
                format!("{a}.dot({b})")
            }
            _ => format!("({}).powi(2)", self.module_scalar(calls)),
        };
        self.depth -= 1;
        e
    }

    /// An array expression of a module body (see [`Gen::module_scalar`]), with
    /// `Dense` layers and, in `Field`, the submodule `Inner`.
    fn module_array(&mut self, calls: Calls) -> String {
        self.depth += 1;
        let leaf = self.depth > 3;
        let pick = if leaf {
            0
        } else if self.rng.chance(8) {
            20
        } else {
            self.rng.below(10)
        };
        let e = match pick {
            0 => format!("({} * {})", self.array_ref(), self.rng.lit()),
            1 => format!("({} + {})", self.array_ref(), self.array_ref()),
            2 => format!("({} * {})", self.array_ref(), self.array_ref()),
            3 => format!("({} - {})", self.array_ref(), self.module_scalar(calls)),
            4 => format!("({} * {})", self.module_scalar(calls), self.array_ref()),
            5 => {
                let f = self.rng.pick(SMOOTH);
                format!("{}.{f}()", self.array_var())
            }
            6 => format!("sigmoid({})", self.array_ref()),
            7 => {
                let b = self.array_ref();
                format!("({} / ({b} * {b} + 1.0))", self.array_ref())
            }
            8 if calls != Calls::None => {
                format!("Dense::new({LEN}).call(cx, {})", self.array_ref())
            }
            9 if calls == Calls::DenseAndInner => {
                let s = self.module_scalar(Calls::None);
                format!("Inner.call(cx, {s}, {})", self.array_ref())
            }
            8 => format!("({} * 0.5)", self.array_ref()),
            9 => format!("-({})", self.array_ref()),
            _ => format!("{}.mapv(|v| v * v + {})", self.array_var(), self.rng.lit()),
        };
        self.depth -= 1;
        e
    }

    /// One statement of a module body: a value, a branch (its test a value computed
    /// from the inputs), now and then a loop.
    fn module_stmt(&mut self, out: &mut String, calls: Calls) {
        match self.rng.below(10) {
            0..=3 => {
                let v = self.fresh("s");
                self.depth = 0;
                let e = self.module_scalar(calls);
                let _ = writeln!(out, "            let {v} = {e};");
                self.scalars.push(v);
            }
            4..=6 => {
                let v = self.fresh("a");
                self.depth = 0;
                let e = self.module_array(calls);
                let _ = writeln!(out, "            let {v} = {e};");
                self.arrays.push(v);
            }
            7 | 8 => {
                let v = self.fresh("s");
                let c = self.scalar_var();
                self.depth = 0;
                let t = self.module_scalar(calls);
                self.depth = 0;
                let e = self.module_scalar(calls);
                let _ = writeln!(
                    out,
                    "            let {v} = if {c} > 0.0731 {{ {t} }} else {{ {e} }};"
                );
                self.scalars.push(v);
            }
            _ => {
                let (s, k) = (self.fresh("s"), self.fresh("k"));
                let s0 = self.scalar_var();
                let a = self.array_var();
                let _ = writeln!(out, "            let mut {s} = {s0};");
                let _ = writeln!(out, "            for {k} in 0..2 {{");
                let _ = writeln!(out, "                {s} = ({s} * 0.5 + {a}[{k}]).tanh();");
                let _ = writeln!(out, "            }}");
                self.scalars.push(s);
            }
        }
    }
}

/// A module's `call` of `x: f64, a: &Array1<f64>` with parameters `p` (a scalar)
/// and `w` (an array) and `stmts` random statements, returning the last scalar and
/// the last array mixed (`scalar_out`) or the last array (else).
fn module_call(rng: &mut Rng, stmts: usize, calls: Calls, scalar_out: bool) -> String {
    let mut g = Gen {
        rng,
        scalars: vec!["x".into(), "p".into()],
        arrays: vec!["a".into(), "w".into()],
        next: 0,
        forward: true,
        depth: 0,
    };
    let mut body = String::new();
    for _ in 0..stmts {
        g.module_stmt(&mut body, calls);
    }
    let s = g.scalars.last().cloned().unwrap_or_default();
    let a = g.arrays.last().cloned().unwrap_or_default();
    let (ret, out) = if scalar_out {
        ("f64", format!("{s} + ({a}).sum() * 0.5"))
    } else {
        let a = if a == "a" { a } else { format!("&{a}") };
        ("Array1<f64>", format!("{a} * {s} + a"))
    };
    format!(
        "        pub fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> {ret} {{\n\
         \x20           let p: f64 = cx.param(\"p\", init::normal(0.5), ());\n\
         \x20           let w: Array1<f64> = cx.param(\"w\", init::normal(0.5), {LEN});\n\
         {body}            {out}\n        }}\n"
    )
}

/// How `Loss` differentiates `Field` (each differentiated again by the parent's
/// gradient): a plain lifted `grad!` (reverse over reverse), `value_and_grad!`, a
/// closure that is more than the call, one reading `Loss`'s parameter and a value
/// computed from it, `vjp!` and its pullback, `vjp!`'s output alone, `grad!` of
/// [`MAPPED`] (a `vmap!` of a closure), `jvp!` (reverse over forward, the rerun).
const LIFTED: &[&str] = &[
    "let (gx, ga) = grad!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), Field, x, a);\n            let val = 0.0;",
    "let (val, (gx, ga)) = value_and_grad!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), Field, x, a);",
    "let (gx, ga) = grad!(cx, |mdl, cx, x, a| (mdl.call(cx, x, a) * 0.5).sin(), Field, x, a);\n            let val = 0.0;",
    "let (val, pb) = vjp!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), Field, x, a);\n            let (_, gx, ga) = pb(val.cos());",
    "let k = (&v * a).sum().tanh();\n            let (gx, ga) = grad!(cx, |mdl, cx, x, a| mdl.call(cx, x, a) * k + (&v * a).sum() * x, Field, x, a);\n            let val = 0.0;",
    "let k = (&v * a).sum().tanh();\n            let (val, _pb) = vjp!(cx, |mdl, cx, x, a| mdl.call(cx, x, a) * k, Field, x, a);\n            let (gx, ga) = (x * val, a * val);",
    "let (gx, ga) = grad!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), Mapped, x, a);\n            let val = 0.0;",
    "let none = no_grad(Variables::new());\n            let (dx, da) = (no_grad(0.3), no_grad(array![0.5, -0.2, 0.9]));\n            let (val, gx) = jvp!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), Field, (x, a), (dx, &da), none);\n            let ga = a * gx;",
];

/// A module mapping `Field` over constant rows through a closure that reads the
/// enclosing method's arguments (a scalar and a reference) and a parameter.
const MAPPED: &str = "    pub struct Mapped;

    #[differentiable]
    impl Mapped {
        pub fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {
            let k: f64 = cx.param(\"k\", init::normal(0.5), ());
            let rs = no_grad(array![[0.5, 1.0], [-1.0, 0.25]]);
            let ys = vmap!(cx, |mdl, cx, r| mdl.call(cx, x * r.sum(), a) * k, Field, rs, in_axes = [0]);
            ys.sum() + (&ys * &ys).sum() * 0.5
        }
    }

";

/// A module program, `mod {name}`: `Loss` differentiates the random body of
/// `Field`, which calls `Dense` layers and the random module `Inner`, through a
/// lifted transform (one of [`LIFTED`]), which the parent's gradient differentiates
/// again.
pub fn module_program(rng: &mut Rng, name: &str) -> String {
    let stmts = 1 + rng.below(3);
    let inner = module_call(rng, stmts, Calls::Dense, false);
    let stmts = 1 + rng.below(6);
    let field = module_call(rng, stmts, Calls::DenseAndInner, true);
    let (c1, c2) = (rng.lit(), rng.lit());
    // Half the programs take the plain `grad!`, whose second order is the
    // transposer's.
    let lifted = if rng.chance(50) {
        LIFTED[0]
    } else {
        rng.pick(LIFTED)
    };
    let mapped = if lifted.contains("Mapped") {
        MAPPED
    } else {
        ""
    };
    format!(
        "mod {name} {{\n    use super::*;\n\n{mapped}    pub struct Inner;\n\n    #[differentiable]\n    impl Inner {{\n{inner}    }}\n\n\
         \x20   pub struct Field;\n\n    #[differentiable]\n    impl Field {{\n{field}    }}\n\n\
         \x20   pub struct Loss;\n\n    #[differentiable]\n    impl Loss {{\n\
         \x20       pub fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {{\n\
         \x20           let v: Array1<f64> = cx.param(\"v\", init::normal(0.5), {LEN});\n\
         \x20           {lifted}\n\
         \x20           gx * gx * {c1} + (&ga * &ga).sum() + (&v * &ga).sum() + (gx * ga.sum() * {c2}).sin() + val * 0.5\n\
         \x20       }}\n    }}\n}}\n"
    )
}

/// A random function `name(x: f64, y: f64, a: &Array1<f64>, b: &Array1<f64>) -> f64`
/// with `stmts` statements, and whether forward mode covers it.
pub fn function(rng: &mut Rng, name: &str, stmts: usize, helpers: &[bool]) -> (String, bool) {
    let mut g = Gen {
        rng,
        scalars: vec!["x".into(), "y".into()],
        arrays: vec!["a".into(), "b".into()],
        next: 0,
        forward: true,
        depth: 0,
    };
    let mut body = String::new();
    for _ in 0..stmts {
        g.stmt(&mut body, helpers);
    }
    // The output mixes the last values, so that every statement may matter.
    let s = g.scalars.last().cloned().unwrap_or_default();
    let a = g.arrays.last().cloned().unwrap_or_default();
    let out = format!("{s} + {a}.sum() * 0.5");
    let forward = g.forward;
    let jvp = if forward { "(jvp)" } else { "" };
    let src = format!(
        "#[differentiable{jvp}]\nfn {name}(x: f64, y: f64, a: &Array1<f64>, b: &Array1<f64>) -> f64 {{\n{body}    {out}\n}}\n"
    );
    (src, forward)
}

/// A source file of `n` random programs, the last `modules` of them module
/// programs, and a test per program (`fn main` when `as_main`, else one `#[test]`),
/// checking `grad!` against central differences and, where forward mode covers the
/// program, `jvp!` against `grad!`; a module program's second-order gradient
/// against central differences and against the rerun's.
pub fn program_file(seed: u64, n: usize, modules: usize, as_main: bool) -> String {
    let mut rng = Rng::new(seed);
    let mut src = String::new();
    src.push_str(
        "// Generated by adjoint-fuzz: random differentiable programs. Do not edit.\n\
         use adjoint::prelude::*;\nuse ndarray::{array, Array1};\n\n",
    );
    // Helpers the programs call.
    // A helper forward mode covers is `(jvp)`, and so are the calls of it.
    let mut helpers = Vec::new();
    for h in 0..2 {
        let (f, forward) = function(&mut rng, &format!("helper_body{h}"), 2, &[]);
        src.push_str(&f);
        let jvp = if forward { "(jvp)" } else { "" };
        let _ = writeln!(
            src,
            "#[differentiable{jvp}]\nfn helper{h}(x: f64, a: &Array1<f64>) -> f64 {{\n    helper_body{h}(x, x * 0.5, a, a)\n}}\n"
        );
        helpers.push(forward);
    }
    let mut checks = String::new();
    for i in 0..n - modules.min(n) {
        let name = format!("program{i}");
        let stmts = 1 + rng.below(6);
        let (f, forward) = function(&mut rng, &name, stmts, &helpers);
        let _ = writeln!(src, "// {name}");
        src.push_str(&f);
        let inputs = format!(
            "({}, {}, array![{}, {}, {}], array![{}, {}, {}])",
            rng.lit(),
            rng.lit(),
            rng.lit(),
            rng.lit(),
            rng.lit(),
            rng.lit(),
            rng.lit(),
            rng.lit()
        );
        let jvp = if forward {
            format!(
                " check_jvp(\"{name}\", |(x, y, a, b), (dx, dy, da, db)| jvp!({name})(*x, *y, a, b, *dx, *dy, da, db).1, |(x, y, a, b)| grad!({name})(*x, *y, a, b), {inputs}, r);"
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            checks,
            "    guard(\"{name}\", &mut report, |r| {{ check(\"{name}\", |(x, y, a, b)| {name}(*x, *y, a, b), |(x, y, a, b)| grad!({name})(*x, *y, a, b), {inputs}, r);{jvp} }});"
        );
    }
    for i in n - modules.min(n)..n {
        let name = format!("program{i}");
        let _ = writeln!(src, "// {name}");
        src.push_str(&module_program(&mut rng, &name));
        let (x, a) = (rng.lit(), [rng.lit(), rng.lit(), rng.lit()].join(", "));
        let _ = writeln!(
            checks,
            "    guard(\"{name}\", &mut report, |r| {{ use {name}::Loss; let (x, a) = ({x}, array![{a}]); let vars = Loss.init({i}, x, &a).unwrap(); check_module(\"{name}\", |v, (x, a)| Loss.apply(v, *x, a).unwrap(), &vars, &(x, a.clone()), grad!(|v: &Variables| Loss.apply(v, x, &a).unwrap())(&vars), grad!(|v: &Variables| Loss.apply_with(v, &impure(), x, &a).unwrap().0)(&vars), grad!(|x: f64, a: &Array1<f64>| Loss.apply(&vars, x, a).unwrap())(x, &a), r); }});"
        );
    }
    let harness = r#"
type Point = (f64, f64, Array1<f64>, Array1<f64>);

/// Runs a program's checks; a panic is recorded as a failure (`PANIC` when run as a
/// program).
fn guard(name: &str, report: &mut Vec<String>, body: impl FnOnce(&mut Vec<String>)) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut local = Vec::new();
        body(&mut local);
        local
    }));
    match r {
        Ok(local) => report.extend(local),
        Err(_) => report.push(format!("PANIC {name}")),
    }
}

/// Central differences against the claimed gradient; a failure is recorded.
fn check(name: &str, f: impl Fn(&Point) -> f64, g: impl Fn(&Point) -> Point, at: Point, report: &mut Vec<String>) {
    differences(name, f, &at, &g(&at), report);
}

/// A scope in which a lifted `grad!` differentiated again runs its child's JVP-VJP
/// again (a random stream makes it impure), not the input gradient written back.
fn impure() -> adjoint::scope::ApplyOptions {
    adjoint::scope::ApplyOptions::new().rng("unused", 0)
}

/// A module program's gradients: along the variables, by reverse over reverse (in a
/// pure scope) against the rerun's (in an impure one) and against central
/// differences; along the inputs against central differences.
fn check_module(
    name: &str,
    loss: impl Fn(&Variables, &(f64, Array1<f64>)) -> f64,
    vars: &Variables,
    at: &(f64, Array1<f64>),
    grads: Variables,
    rerun: Variables,
    input_grads: (f64, Array1<f64>),
    report: &mut Vec<String>,
) {
    for g in [&grads, &rerun] {
        if let Some(e) = g.error() {
            report.push(format!("{name}: {e}"));
            return;
        }
    }
    let pairs: Vec<_> = grads.leaves().zip(rerun.leaves()).collect();
    if pairs.len() != rerun.leaf_count() || pairs.len() != grads.leaf_count() {
        report.push(format!("{name}: gradient {} but rerun {}", grads.shapes(), rerun.shapes()));
        return;
    }
    for ((c, p, l), (_, q, m)) in pairs {
        let (l, m) = (l.to_f64_vec(), m.to_f64_vec());
        let close = l.len() == m.len() && l.iter().zip(&m).all(|(u, v)| (u - v).abs() <= 1e-9 * (1.0 + v.abs()));
        if p != q || !close {
            report.push(format!("{name}: {c}/{p} {l:?} by reverse over reverse, {q} {m:?} by the rerun"));
        }
    }
    differences(name, |v: &Variables| loss(v, at), vars, &grads, report);
    differences(name, |p: &(f64, Array1<f64>)| loss(vars, p), at, &input_grads, report);
}

/// Central differences of `f` at `at` against `grad`; a failure is recorded.
fn differences<P: adjoint::check::Params>(name: &str, f: impl Fn(&P) -> f64, at: &P, grad: &P, report: &mut Vec<String>) {
    let value = f(at);
    if !value.is_finite() {
        return;
    }
    // Central differences at shrinking steps: a program with a steep, fast-turning
    // output (a gradient of 1e7 under a cosine) needs a small step, where round-off
    // grows; the gradient is wrong only if no step agrees with it. The round-off of a
    // difference is about eps |f| / step: a value of 1e6 with a gradient element of
    // 0.1 is as exact as its differences can tell.
    let mut first = None;
    for step in [1e-6, 1e-8, 1e-10] {
        let atol = 1e-6_f64.max(4.0 * f64::EPSILON * value.abs() / step);
        let tol = adjoint::check::Tolerance { step, rtol: 1e-5, atol };
        match adjoint::check::check_grad(&f, at, grad, tol) {
            Ok(()) => return,
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first {
        report.push(format!("{name}: {e}"));
    }
}

/// Forward mode along a direction against the gradient's inner product with it.
fn check_jvp(name: &str, jvp: impl Fn(&Point, &Point) -> f64, g: impl Fn(&Point) -> Point, at: Point, report: &mut Vec<String>) {
    let dir: Point = (0.3, -0.7, array![0.5, -0.2, 0.9], array![-1.0, 0.4, 0.1]);
    let (gx, gy, ga, gb) = g(&at);
    let want = gx * dir.0 + gy * dir.1 + ga.dot(&dir.2) + gb.dot(&dir.3);
    let got = jvp(&at, &dir);
    if !want.is_finite() {
        return;
    }
    if (got - want).abs() > 1e-9 * (1.0 + want.abs()) {
        report.push(format!("{name}: jvp {got} but <grad, dir> {want}"));
    }
}
"#;
    src.push_str(harness);
    let header = if as_main {
        "fn main() {\n    let mut report = Vec::new();\n"
    } else {
        "#[test]\nfn random_programs_match_central_differences_and_forward_mode() {\n    let mut report = Vec::new();\n"
    };
    src.push_str(header);
    src.push_str(&checks);
    if as_main {
        src.push_str(
            "    for r in &report {\n        if r.starts_with(\"PANIC\") {\n            println!(\"{r}\");\n        } else {\n            println!(\"WRONG {r}\");\n        }\n    }\n}\n",
        );
    } else {
        src.push_str("    assert!(report.is_empty(), \"{}\", report.join(\"\\n\"));\n}\n");
    }
    src
}
