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

/// Prints an expansion, for debugging: `cargo test -p adjoint-macros show -- --nocapture`.
#[allow(dead_code)]
fn show(item: TokenStream) {
    println!("{}", expand(item));
}

#[test]
fn show_rnn() {
    if std::env::var("ADJOINT_SHOW").is_ok() {
        show(quote! {
            fn rnn(w: &Array2<f64>, u: &Array2<f64>, xs: &Array3<f64>) -> f64 {
                let mut h = Array2::<f64>::zeros((2, 4));
                for t in 0..5 {
                    h = (h.dot(w) + xs.index_axis(Axis(0), t).dot(u)).tanh();
                }
                (&h * &h).sum()
            }
        });
        show(quote! {
            fn softmax_xent(logits: &Array2<f64>, #[no_grad] labels: &[usize]) -> f64 {
                let logp = log_softmax(logits, Axis(1));
                let mut total = 0.0;
                for i in 0..labels.len() {
                    total = total + logp[[i, labels[i]]];
                }
                -total / labels.len() as f64
            }
        });
    }
}
