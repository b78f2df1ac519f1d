//! A differentiable function imported by name, from another module or under another
//! name, is differentiated through: its companions come along with it.

use adjoint::prelude::*;

mod losses {
    use adjoint::prelude::*;

    #[differentiable]
    pub fn squared(x: f64, target: f64) -> f64 {
        let e = x - target;
        e * e
    }

    pub mod nested {
        use adjoint::prelude::*;

        #[differentiable]
        pub fn cube(x: f64) -> f64 {
            x * x * x
        }
    }
}

use losses::nested::cube as third_power;
use losses::squared;

#[differentiable]
fn total(x: f64) -> f64 {
    squared(x, 1.0) + third_power(x) + losses::nested::cube(2.0 * x)
}

#[test]
fn imported_functions_are_differentiated() {
    // 2 (x - 1) + 3 x^2 + 3 (2x)^2 * 2
    let x = 1.5;
    assert_eq!(
        grad!(total)(x),
        2.0 * (x - 1.0) + 3.0 * x * x + 24.0 * x * x
    );
    assert_eq!(grad!(squared)(3.0, 1.0), (4.0, -4.0));
    assert_eq!(grad!(losses::nested::cube)(2.0), 12.0);
}
