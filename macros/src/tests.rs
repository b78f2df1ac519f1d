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

/// The expansion time of a function of `n` statements (for BENCHMARKS.md:
/// `cargo test --release -p adjoint-macros expansion_time -- --ignored --nocapture`).
#[test]
#[ignore]
fn expansion_time() {
    for n in [250usize, 500, 1000, 2000, 3000] {
        let stmts: Vec<TokenStream> = (1..=n)
            .map(|i| {
                let (a, b) = (quote::format_ident!("a{}", i), quote::format_ident!("a{}", i - 1));
                quote!(let #a = (#b * x).sin() + #b * 0.5;)
            })
            .collect();
        let last = quote::format_ident!("a{}", n);
        let item = quote! { fn long(x: f64) -> f64 { let a0 = x; #(#stmts)* #last } };
        let start = std::time::Instant::now();
        let out = stacker::grow(1 << 30, || crate::expand::differentiable(TokenStream::new(), item));
        let t = start.elapsed();
        println!("n = {n}: {:.2} s, {} bytes", t.as_secs_f64(), out.to_string().len());
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
        quote!(fn f(x: f64) -> f64 { x.powi() }),
        quote!(fn f(x: &Array2<f64>) -> f64 { x.sum_axis().sum() }),
        quote!(fn f(x: &Array2<f64>) -> f64 { x.row().sum() }),
        quote!(fn f(x: &Array2<f64>) -> f64 { x.dot().sum() }),
        quote!(fn f(x: f64) -> f64 { x.max() }),
        quote!(fn f(x: f64) -> f64 { x.clamp(0.0) }),
        quote!(fn f(x: f64) -> f64 { f64::max(x) }),
        quote!(fn f(x: &Array1<f64>) -> f64 { concatenate(Axis(0)).unwrap().sum() }),
        quote!(fn f(r#type: f64) -> f64 { let r#in = r#type * 2.0; r#in }),
        quote!(fn f(_: f64, x: f64) -> f64 { x }),
        quote!(fn f<'a>(x: &'a f64) -> &'a f64 { x }),
        quote!(fn f<T: Copy>(x: f64, t: T) -> f64 { x }),
        quote!(fn f(x: f64) -> f64 { x.mapv() }),
        quote!(fn f(x: f64) -> f64 { let g = |a, b| a * b; g(x) }),
        quote!(fn f(x: f64) -> f64 { array![] }),
        quote!(fn f(x: f64) -> f64 { dbg!() + x }),
        quote!(fn f(x: f64) -> f64 { no_grad() }),
    ];
    for item in cases {
        let text = item.to_string();
        let out = std::panic::catch_unwind(|| {
            stacker::grow(1 << 26, || crate::expand::differentiable(TokenStream::new(), item))
        });
        assert!(out.is_ok(), "the macro panicked on `{text}`");
    }
}
