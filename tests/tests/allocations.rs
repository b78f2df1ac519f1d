//! The generated code allocates what an expert's would: nothing for straight-line
//! scalar code, and nothing but the gradient for a scalar loop over a range (its
//! reverse sweep walks the range backwards and recomputes the scalars).

use adjoint::prelude::*;

fn allocations(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[differentiable]
fn straight(x: f64, y: f64) -> f64 {
    let z = x * y;
    let w = if z > 0.0 { z.sin() } else { z.cos() };
    w * x + y.exp() / (1.0 + x * x)
}

#[differentiable]
fn rosenbrock(x: &ndarray::Array1<f64>) -> f64 {
    let mut s = 0.0;
    for i in 0..x.len() - 1 {
        let a = x[i + 1] - x[i] * x[i];
        let b = 1.0 - x[i];
        s += 100.0 * a * a + b * b;
    }
    s
}

// One test, so no other test's allocations interleave with the counts.
#[test]
fn generated_code_allocates_only_what_it_must() {
    let n = allocations(|| {
        std::hint::black_box(grad!(straight)(
            std::hint::black_box(0.3),
            std::hint::black_box(-0.7),
        ));
    });
    assert_eq!(
        n, 0,
        "straight-line scalar code with a branch allocates nothing"
    );

    let x = ndarray::Array1::from_elem(1000, 0.5);
    let n = allocations(|| {
        std::hint::black_box(grad!(rosenbrock)(std::hint::black_box(&x)));
    });
    // The gradient array, and no stack for the loop.
    assert_eq!(n, 1, "a scalar loop over a range keeps no stack");
}
