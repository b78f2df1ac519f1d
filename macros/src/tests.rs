//! Golden snapshots of generated code: every change to what the macro writes shows
//! up in review. Regenerate with `UPDATE_EXPECT=1 cargo test -p adjoint-macros`.

use proc_macro2::TokenStream;
use quote::quote;

/// The expansion of `#[differentiable]` on `item`, formatted.
fn expand(item: TokenStream) -> String {
    let out = crate::expand::differentiable(TokenStream::new(), item);
    match syn::parse2::<syn::File>(out.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => out.to_string(),
    }
}

#[test]
fn scalar_mix() {
    let out = expand(quote! {
        fn scalar_mix(x: f64, y: f64) -> f64 {
            x * y + x.sin() * y.exp() / (1.0 + x * x)
        }
    });
    expect_test::expect_file!["../snapshots/scalar_mix.rs"].assert_eq(&out);
}

#[test]
fn loop_carried_rnn() {
    // Each iteration saves only what its reverse reads; views are recomputed.
    let out = expand(quote! {
        fn rnn(w: &Array2<f64>, u: &Array2<f64>, xs: &Array3<f64>) -> f64 {
            let mut h = Array2::<f64>::zeros((2, 4));
            for t in 0..5 {
                h = (h.dot(w) + xs.index_axis(Axis(0), t).dot(u)).tanh();
            }
            (&h * &h).sum()
        }
    });
    expect_test::expect_file!["../snapshots/rnn.rs"].assert_eq(&out);
}

#[test]
fn constants_get_no_adjoint() {
    // `c` is a constant matrix: `x.dot(&c)` computes one cotangent, not two, and
    // the labels and their loop index never get adjoints.
    let out = expand(quote! {
        fn xent(x: &Array2<f64>, #[no_grad] c: &Array2<f64>, #[no_grad] labels: &[usize]) -> f64 {
            let logp = log_softmax(&x.dot(c), Axis(1));
            let mut total = 0.0;
            for i in 0..labels.len() {
                total = total + logp[[i, labels[i]]];
            }
            -total
        }
    });
    expect_test::expect_file!["../snapshots/constants.rs"].assert_eq(&out);
}

#[test]
fn branch_records_the_arm() {
    let out = expand(quote! {
        fn branch(x: f64) -> f64 {
            if x > 1.0 { x * x * x } else { 2.0 * x - 1.0 }
        }
    });
    expect_test::expect_file!["../snapshots/branch.rs"].assert_eq(&out);
}

#[test]
fn scalar_loop_rosenbrock() {
    let out = expand(quote! {
        fn rosenbrock(x: &Array1<f64>) -> f64 {
            let mut s = 0.0;
            for i in 0..x.len() - 1 {
                let a = x[i + 1] - x[i] * x[i];
                let b = 1.0 - x[i];
                s += 100.0 * a * a + b * b;
            }
            s
        }
    });
    expect_test::expect_file!["../snapshots/rosenbrock.rs"].assert_eq(&out);
}

#[test]
fn module_input_gradient_written_back() {
    // A physics-informed field: its input gradient as source (the submodules' own
    // input gradients called at the paths their forward calls ran at), which
    // `#[differentiable]` differentiates again for a lifted `grad!`'s second order.
    let out = expand(quote! {
        impl Field {
            fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
                let h1 = Dense::new(32).call(cx, x).tanh();
                let h2 = Dense::new(32).call(cx, &h1).tanh();
                Dense::new(1).call(cx, &h2).sum()
            }
        }
    });
    let start = out
        .find("    pub fn __call_body_vjpx")
        .expect("the input gradient");
    let len = out[start..].find("\n    }\n").expect("its end") + "\n    }\n".len();
    expect_test::expect_file!["../snapshots/field_vjpx.rs"].assert_eq(&out[start..start + len]);
}

/// The expansion time of a function of `n` statements (for BENCHMARKS.md:
/// `cargo test --release -p adjoint-macros expansion_time -- --ignored --nocapture`).
#[test]
#[ignore]
fn expansion_time() {
    for n in [250usize, 500, 1000, 2000, 3000] {
        let stmts: Vec<TokenStream> = (1..=n)
            .map(|i| {
                let (a, b) = (
                    quote::format_ident!("a{}", i),
                    quote::format_ident!("a{}", i - 1),
                );
                quote!(let #a = (#b * x).sin() + #b * 0.5;)
            })
            .collect();
        let last = quote::format_ident!("a{}", n);
        let item = quote! { fn long(x: f64) -> f64 { let a0 = x; #(#stmts)* #last } };
        let start = std::time::Instant::now();
        let out = stacker::grow(1 << 30, || {
            crate::expand::differentiable(TokenStream::new(), item)
        });
        let t = start.elapsed();
        println!(
            "n = {n}: {:.2} s, {} bytes",
            t.as_secs_f64(),
            out.to_string().len()
        );
    }
}

#[test]
fn statement_macros_in_a_module() {
    let out = crate::expand::differentiable(
        TokenStream::new(),
        quote! {
            impl M {
                fn call(&self, cx: &mut Scope, x: f64) -> f64 {
                    println!("x = {x}");
                    assert!(x.is_finite());
                    let p: f64 = cx.param("p", init::ones, ());
                    p * x
                }
            }
        },
    );
    assert!(!out.to_string().contains("compile_error"));
}

/// Inputs that once made the macro panic: each expands to the item with a spanned
/// error, or to working code, never a panic.
#[test]
fn no_panics_on_unusual_inputs() {
    let cases = [
        quote!(
            fn f(x: f64) -> f64 {
                x.powi()
            }
        ),
        quote!(
            fn f(x: &Array2<f64>) -> f64 {
                x.sum_axis().sum()
            }
        ),
        quote!(
            fn f(x: &Array2<f64>) -> f64 {
                x.row().sum()
            }
        ),
        quote!(
            fn f(x: &Array2<f64>) -> f64 {
                x.dot().sum()
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                x.max()
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                x.clamp(0.0)
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                f64::max(x)
            }
        ),
        quote!(
            fn f(x: &Array1<f64>) -> f64 {
                concatenate(Axis(0)).unwrap().sum()
            }
        ),
        quote!(
            fn f(r#type: f64) -> f64 {
                let r#in = r#type * 2.0;
                r#in
            }
        ),
        quote!(
            fn r#loop(x: f64) -> f64 {
                x
            }
        ),
        quote!(
            fn f(_: f64, x: f64) -> f64 {
                x
            }
        ),
        quote!(
            fn f<'a>(x: &'a f64) -> &'a f64 {
                x
            }
        ),
        quote!(
            fn f<T: Copy>(x: f64, t: T) -> f64 {
                x
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                x.mapv()
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                let g = |a, b| a * b;
                g(x)
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                array![]
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                dbg!() + x
            }
        ),
        quote!(
            fn f(x: f64) -> f64 {
                no_grad()
            }
        ),
    ];
    for item in cases {
        let text = item.to_string();
        let out = std::panic::catch_unwind(|| {
            stacker::grow(1 << 26, || {
                crate::expand::differentiable(TokenStream::new(), item)
            })
        });
        assert!(out.is_ok(), "the macro panicked on `{text}`");
    }
}

/// Mutants of the test suite's own differentiable items (a token deleted,
/// duplicated, swapped with its neighbour, or replaced by another of the item's):
/// the macro expands each to code or to errors, and never panics. 1,000 mutants
/// here; `ADJOINT_MUTANTS=100000 cargo test --release -p adjoint-macros mutants`
/// runs more.
#[test]
fn mutants_of_the_test_suite_never_panic() {
    // `tests/deep.rs` nests 800 parentheses: parsing it wants a deep stack.
    stacker::grow(1 << 30, mutants);
}

fn mutants() {
    let count: usize = std::env::var("ADJOINT_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let items = suite_items();
    assert!(items.len() > 50, "found {} items", items.len());
    let mut rng = adjoint_fuzz::Rng::new(42);
    let (mut panics, mut parsed) = (Vec::new(), 0);
    for k in 0..count {
        let (item, is_attr) = &items[rng.below(items.len())];
        let mutant = mutate(item, &mut rng);
        if syn::parse2::<syn::Item>(mutant.clone()).is_err() {
            continue;
        }
        parsed += 1;
        let text = mutant.to_string();
        let attr = if *is_attr {
            TokenStream::new()
        } else {
            quote!(jvp)
        };
        let out = std::panic::catch_unwind(|| crate::expand::differentiable(attr, mutant));
        if out.is_err() {
            panics.push(format!("mutant {k}: {text}"));
        }
    }
    println!(
        "{count} mutants of {} items: {parsed} parse as items, {} panicked",
        items.len(),
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "{} of {parsed} mutants made the macro panic:\n{}",
        panics.len(),
        panics.join("\n")
    );
}

/// Every item marked `#[differentiable]` in `tests/tests/*.rs`, without the
/// attribute, and whether it had no arguments.
fn suite_items() -> Vec<(TokenStream, bool)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the test suite").flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(file) = syn::parse_file(&text) else {
            continue;
        };
        for mut item in file.items {
            let attrs = match &mut item {
                syn::Item::Fn(f) => &mut f.attrs,
                syn::Item::Impl(i) => &mut i.attrs,
                _ => continue,
            };
            let Some(pos) = attrs
                .iter()
                .position(|a| a.path().is_ident("differentiable"))
            else {
                continue;
            };
            let plain = matches!(attrs[pos].meta, syn::Meta::Path(_));
            attrs.remove(pos);
            out.push((quote::ToTokens::to_token_stream(&item), plain));
        }
    }
    out
}

/// One mutation of `item`'s tokens, at any depth.
fn mutate(item: &TokenStream, rng: &mut adjoint_fuzz::Rng) -> TokenStream {
    use proc_macro2::{Group, TokenTree};
    fn flatten(t: &TokenStream, out: &mut Vec<TokenTree>) {
        for tt in t.clone() {
            if let TokenTree::Group(g) = &tt {
                flatten(&g.stream(), out);
            }
            out.push(tt);
        }
    }
    let mut all = Vec::new();
    flatten(item, &mut all);
    let leaves: Vec<TokenTree> = all
        .into_iter()
        .filter(|t| !matches!(t, TokenTree::Group(_)))
        .collect();
    let total = leaves.len().max(1);
    let target = rng.below(total);
    let op = rng.below(4);
    let donor = leaves[rng.below(total)].clone();
    // Walks the tree, counting leaves, applying the mutation at `target`.
    fn walk(
        t: TokenStream,
        n: &mut usize,
        target: usize,
        op: usize,
        donor: &TokenTree,
    ) -> TokenStream {
        let trees: Vec<TokenTree> = t.into_iter().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => {
                    let mut ng = Group::new(g.delimiter(), walk(g.stream(), n, target, op, donor));
                    ng.set_span(g.span());
                    out.push(TokenTree::Group(ng));
                }
                leaf => {
                    if *n == target {
                        match op {
                            0 => {}
                            1 => {
                                out.push(leaf.clone());
                                out.push(leaf.clone());
                            }
                            2 if i + 1 < trees.len() => {
                                out.push(trees[i + 1].clone());
                                out.push(leaf.clone());
                                i += 1;
                            }
                            _ => out.push(donor.clone()),
                        }
                    } else {
                        out.push(leaf.clone());
                    }
                    *n += 1;
                }
            }
            i += 1;
        }
        out.into_iter().collect()
    }
    let mut n = 0;
    walk(item.clone(), &mut n, target, op, &donor)
}
