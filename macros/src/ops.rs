//! The primitives the macro knows by name, and how each pullback is wired: which
//! runtime function it calls and what it reads. The mathematics lives in the
//! runtime (`adjoint::rules`); this table only says what to pass.

/// What a pullback reads besides the cotangent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// An operand, by reference.
    Operand(usize),
    /// An operand's shape (zero-sized for a scalar), by reference: what `+`, `-` and
    /// reductions need, so the operand itself need not be kept.
    Shape(usize),
    /// The primitive's output, by reference.
    Out,
    /// A constant argument.
    Const(usize),
}

/// How a pullback delivers its operand's contribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Returns the contribution.
    Returns,
    /// Adds it into the operand's adjoint in place (`fn pb(&mut acc, ..)`).
    AddsInto,
}

/// The pullback for one operand.
#[derive(Debug)]
pub struct Pullback {
    pub func: &'static str,
    pub reads: &'static [Read],
    pub style: Style,
    /// The same contribution added into an adjoint that already exists, reading the
    /// cotangent by reference (`fn pb_into(&mut acc, .., &ct)`): a matrix product's
    /// pullback accumulates in its kernel instead of allocating a result to add.
    pub into: Option<&'static str>,
}

/// A primitive: the runtime function computing it and one pullback per operand
/// (`None` where the operand must be constant).
#[derive(Debug)]
pub struct Rule {
    pub func: &'static str,
    pub operands: usize,
    pub pullbacks: &'static [Option<Pullback>],
    /// Constants are passed by reference (`slice`'s `SliceInfo`).
    pub consts_by_ref: bool,
    /// The result borrows its operand (a view): the reverse sweep recomputes it
    /// from the operand instead of saving it.
    pub view: bool,
    /// Applied element by element: on scalars the result is a scalar, cheap enough
    /// for a loop's reverse sweep to recompute rather than save.
    pub elementwise: bool,
    /// One pullback for all operands at once, used when all are active: it returns a
    /// tuple and may share work or the cotangent's buffer between them.
    pub joint: Option<Pullback>,
    /// Has forms taking an operand by value, `{func}_reusing(x, &y)` and (with two
    /// operands) `{func}_reusing_rhs(&x, y)`, that compute in its buffer: the primal
    /// hands over a temporary nothing reads afterwards (`adjoint::rules::reuse`).
    pub reusing: bool,
}

use Read::{Const, Operand, Out, Shape};

macro_rules! pb {
    ($f:literal [$($r:expr),*]) => {
        Some(Pullback { func: $f, reads: &[$($r),*], style: Style::Returns, into: None })
    };
    ($f:literal [$($r:expr),*] into $g:literal) => {
        Some(Pullback { func: $f, reads: &[$($r),*], style: Style::Returns, into: Some($g) })
    };
    (into $f:literal [$($r:expr),*]) => {
        Some(Pullback { func: $f, reads: &[$($r),*], style: Style::AddsInto, into: None })
    };
}

macro_rules! rule {
    ($f:literal, $n:literal, [$($pb:expr),*]) => {
        Rule { func: $f, operands: $n, pullbacks: &[$($pb),*], consts_by_ref: false, view: false, elementwise: false, joint: None, reusing: false }
    };
}

impl Rule {
    /// Marks the result as a view of its operand.
    const fn view(mut self) -> Self {
        self.view = true;
        self
    }

    /// Marks the rule as elementwise.
    const fn elementwise(mut self) -> Self {
        self.elementwise = true;
        self
    }

    /// Gives the rule a joint pullback for when every operand is active.
    const fn joint(mut self, pb: Option<Pullback>) -> Self {
        self.joint = pb;
        self
    }

    /// Marks the rule as having forms that reuse an operand's buffer.
    const fn reusing(mut self) -> Self {
        self.reusing = true;
        self
    }

    /// Marks the constants as passed by reference.
    const fn consts_by_ref(mut self) -> Self {
        self.consts_by_ref = true;
        self
    }

    /// How many constant arguments the rule takes after its operands (an exponent,
    /// an axis, a shape): those its pullbacks read, or one for a reshape's shape.
    pub fn const_args(&self) -> usize {
        if self.func == "reshape" || self.func == "into_shape" {
            return 1;
        }
        self.pullbacks
            .iter()
            .flatten()
            .chain(&self.joint)
            .flat_map(|p| p.reads)
            .filter_map(|r| match r {
                Read::Const(j) => Some(j + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

pub static ADD: Rule = rule!(
    "add",
    2,
    [pb!("add_pb_lhs"[Shape(0)]), pb!("add_pb_rhs"[Shape(1)])]
)
.elementwise()
.reusing()
.joint(pb!("add_pb_both" [Shape(0), Shape(1)]));
pub static SUB: Rule = rule!(
    "sub",
    2,
    [pb!("sub_pb_lhs"[Shape(0)]), pb!("sub_pb_rhs"[Shape(1)])]
)
.elementwise()
.reusing()
.joint(pb!("sub_pb_both" [Shape(0), Shape(1)]));
/// `x * x` (a product of a value with itself).
pub static SQUARE: Rule = rule!("square", 1, [pb!("square_pb"[Operand(0)])]).elementwise();
pub static MUL: Rule = rule!(
    "mul",
    2,
    [
        pb!("mul_pb_lhs" [Shape(0), Operand(1)]),
        pb!("mul_pb_rhs" [Operand(0), Shape(1)])
    ]
)
.elementwise()
.reusing();
pub static DIV: Rule = rule!(
    "div",
    2,
    [
        pb!("div_pb_lhs" [Shape(0), Operand(1)]),
        pb!("div_pb_rhs" [Operand(1), Out])
    ]
)
.elementwise()
.reusing();
pub static NEG: Rule = rule!("neg", 1, [pb!("neg_pb"[Operand(0)])])
    .elementwise()
    .reusing();
/// An element read: its result is always a scalar.
pub static INDEX: Rule = rule!("index", 1, [pb!(into "index_pb" [Const(0)])]);
pub static CAST: Rule = rule!("cast", 1, [pb!("cast_pb"[Operand(0)])]).elementwise();

macro_rules! unary_table {
    ($($name:literal => $pbf:literal($read:expr)),* $(,)?) => {
        static UNARY: &[(&str, Rule)] = &[
            $(($name, rule!($name, 1, [pb!($pbf [$read])]).elementwise().reusing()),)*
        ];
    };
}

unary_table! {
    "exp" => "exp_pb"(Out), "exp_m1" => "exp_m1_pb"(Out), "ln" => "ln_pb"(Operand(0)),
    "ln_1p" => "ln_1p_pb"(Operand(0)), "log2" => "log2_pb"(Operand(0)), "log10" => "log10_pb"(Operand(0)),
    "sqrt" => "sqrt_pb"(Out), "cbrt" => "cbrt_pb"(Out), "recip" => "recip_pb"(Out),
    "sin" => "sin_pb"(Operand(0)), "cos" => "cos_pb"(Operand(0)), "tan" => "tan_pb"(Out),
    "asin" => "asin_pb"(Operand(0)), "acos" => "acos_pb"(Operand(0)), "atan" => "atan_pb"(Operand(0)),
    "sinh" => "sinh_pb"(Operand(0)), "cosh" => "cosh_pb"(Operand(0)), "tanh" => "tanh_pb"(Out),
    "abs" => "abs_pb"(Operand(0)),
    "relu" => "relu_pb"(Out), "sigmoid" => "sigmoid_pb"(Out), "softplus" => "softplus_pb"(Operand(0)),
}

static METHODS: &[(&str, Rule)] = &[
    (
        "powi",
        rule!("powi", 1, [pb!("powi_pb" [Operand(0), Const(0)])]).elementwise(),
    ),
    (
        "powf",
        rule!(
            "powf",
            2,
            [
                pb!("powf_pb_lhs" [Operand(0), Operand(1)]),
                pb!("powf_pb_rhs" [Operand(0), Out])
            ]
        )
        .elementwise(),
    ),
    (
        "atan2",
        rule!(
            "atan2",
            2,
            [
                pb!("atan2_pb_lhs" [Operand(0), Operand(1)]),
                pb!("atan2_pb_rhs" [Operand(0), Operand(1)])
            ]
        )
        .elementwise(),
    ),
    (
        "hypot",
        rule!(
            "hypot",
            2,
            [
                pb!("hypot_pb_lhs" [Operand(0), Operand(1)]),
                pb!("hypot_pb_rhs" [Operand(0), Operand(1)])
            ]
        )
        .elementwise(),
    ),
    (
        "max",
        rule!(
            "max",
            2,
            [
                pb!("max_pb_lhs" [Operand(0), Operand(1)]),
                pb!("max_pb_rhs" [Operand(0), Operand(1)])
            ]
        )
        .elementwise(),
    ),
    (
        "min",
        rule!(
            "min",
            2,
            [
                pb!("min_pb_lhs" [Operand(0), Operand(1)]),
                pb!("min_pb_rhs" [Operand(0), Operand(1)])
            ]
        )
        .elementwise(),
    ),
    (
        "clamp",
        rule!(
            "clamp",
            3,
            [
                pb!("clamp_pb" [Operand(0), Operand(1), Operand(2)]),
                None,
                None
            ]
        )
        .elementwise(),
    ),
    (
        "mul_add",
        rule!(
            "mul_add",
            3,
            [
                pb!("mul_add_pb_a"[Operand(1)]),
                pb!("mul_add_pb_b"[Operand(0)]),
                pb!("mul_add_pb_c" [])
            ]
        )
        .elementwise(),
    ),
    (
        "dot",
        rule!(
            "dot",
            2,
            [
                pb!("dot_pb_lhs" [Operand(0), Operand(1)] into "dot_pb_lhs_into"),
                pb!("dot_pb_rhs" [Operand(0), Operand(1)] into "dot_pb_rhs_into")
            ]
        )
        .joint(pb!("dot_pb_both" [Operand(0), Operand(1)])),
    ),
    // Ownership and layout: the value in another container, its cotangent unchanged.
    ("to_owned", rule!("to_owned", 1, [pb!("identity_pb" [])])),
    ("into_owned", rule!("to_owned", 1, [pb!("identity_pb" [])])),
    ("clone", rule!("clone", 1, [pb!("identity_pb" [])])),
    ("view", rule!("view", 1, [pb!("identity_pb" [])]).view()),
    ("reborrow", rule!("view", 1, [pb!("identity_pb" [])]).view()),
    (
        "as_standard_layout",
        rule!("as_standard_layout", 1, [pb!("identity_pb" [])]).view(),
    ),
    ("to_shared", rule!("to_shared", 1, [pb!("identity_pb" [])])),
    (
        "into_shared",
        rule!("to_shared", 1, [pb!("identity_pb" [])]),
    ),
    ("t", rule!("t", 1, [pb!("t_pb" [])]).view()),
    (
        "permuted_axes",
        rule!("permuted_axes", 1, [pb!("permuted_axes_pb"[Const(0)])])
            .view()
            .consts_by_ref(),
    ),
    // Trees of variables (`adjoint::rules::tree`).
    (
        "merge",
        rule!(
            "merge",
            2,
            [
                pb!("merge_pb_lhs" [Operand(0), Operand(1)]),
                pb!("merge_pb_rhs"[Operand(1)])
            ]
        ),
    ),
    ("only", rule!("only", 1, [pb!("only_pb"[Const(0)])])),
    (
        "reversed_axes",
        rule!("reversed_axes", 1, [pb!("t_pb" [])]).view(),
    ),
    ("sum", rule!("sum", 1, [pb!("sum_pb"[Shape(0)])])),
    (
        "sum_axis",
        rule!("sum_axis", 1, [pb!("sum_axis_pb" [Shape(0), Const(0)])]),
    ),
    (
        "insert_axis",
        rule!(
            "insert_axis",
            1,
            [pb!("insert_axis_pb" [Shape(0), Const(0)])]
        )
        .view(),
    ),
    (
        "slice",
        rule!("slice", 1, [pb!(into "slice_pb" [Const(0)])])
            .view()
            .consts_by_ref(),
    ),
    (
        "row",
        rule!("row", 1, [pb!(into "row_pb" [Const(0)])]).view(),
    ),
    (
        "column",
        rule!("column", 1, [pb!(into "column_pb" [Const(0)])]).view(),
    ),
    (
        "index_axis",
        rule!(
            "index_axis",
            1,
            [pb!(into "index_axis_pb" [Const(0), Const(1)])]
        )
        .view(),
    ),
];

/// Methods that return an `Option`/`Result` the user unwraps: `x.mean().unwrap()`
/// is one primitive.
static UNWRAPPED: &[(&str, Rule)] = &[
    ("mean", rule!("mean", 1, [pb!("mean_pb"[Shape(0)])])),
    (
        "mean_axis",
        rule!("mean_axis", 1, [pb!("mean_axis_pb" [Shape(0), Const(0)])]),
    ),
    (
        "to_shape",
        rule!("reshape", 1, [pb!("reshape_pb"[Shape(0)])]).view(),
    ),
    (
        "into_shape_with_order",
        rule!("into_shape", 1, [pb!("reshape_pb"[Shape(0)])]).view(),
    ),
];

/// Free functions of `adjoint::nn` (the operands first, then constants).
static FUNCTIONS: &[(&str, Rule)] = &[
    (
        "softmax",
        rule!("softmax", 1, [pb!("softmax_pb" [Out, Const(0)])]),
    ),
    (
        "log_softmax",
        rule!("log_softmax", 1, [pb!("log_softmax_pb" [Out, Const(0)])]),
    ),
    // What forward mode writes for an operand that may be a scalar or an array: the
    // value itself, a scalar by value (`adjoint::rules::shape::operand`).
    (
        "operand",
        rule!("operand", 1, [pb!("identity_pb" [])]).view(),
    ),
    (
        "logsumexp",
        rule!("logsumexp", 1, [pb!("logsumexp_pb" [Operand(0), Const(0)])]),
    ),
    // `x · w` over x's last axis (`adjoint::rules::linalg::dot_last`).
    (
        "dot_last",
        rule!(
            "dot_last",
            2,
            [
                pb!("dot_last_pb_x" [Operand(1)] into "dot_last_pb_x_into"),
                pb!("dot_last_pb_w" [Operand(0), Operand(1)] into "dot_last_pb_w_into")
            ]
        )
        .joint(pb!("dot_last_pb_both" [Operand(0), Operand(1)])),
    ),
    // What forward mode writes for reshapes (the tangent, then the shape),
    // permutations (the tangent, then the axes) and new axes.
    (
        "insert_axis",
        rule!(
            "insert_axis",
            1,
            [pb!("insert_axis_pb" [Shape(0), Const(0)])]
        )
        .view(),
    ),
    (
        "reversed_axes",
        rule!("reversed_axes", 1, [pb!("t_pb" [])]).view(),
    ),
    (
        "permuted_axes",
        rule!("permuted_axes", 1, [pb!("permuted_axes_pb"[Const(0)])])
            .view()
            .consts_by_ref(),
    ),
    (
        "reshape",
        rule!("reshape", 1, [pb!("reshape_pb"[Shape(0)])]).view(),
    ),
    (
        "into_shape",
        rule!("into_shape", 1, [pb!("reshape_pb"[Shape(0)])]).view(),
    ),
    // Rows of a table by integer ids (`adjoint::rules::gather`): the ids are constant.
    (
        "take",
        rule!("take", 2, [pb!("take_pb" [Shape(0), Operand(1)]), None]),
    ),
    // The matrix product batched over leading axes (`adjoint::rules::linalg`).
    (
        "batch_matmul",
        rule!(
            "batch_matmul",
            2,
            [
                pb!("batch_matmul_pb_a" [Operand(0), Operand(1)]),
                pb!("batch_matmul_pb_b" [Operand(0), Operand(1)])
            ]
        ),
    ),
    // `where_(mask, x, fill)`: the mask is constant.
    (
        "where_",
        rule!("where_", 2, [None, pb!("where_pb" [Operand(0), Const(0)])]),
    ),
    // optax's cross entropies over the last axis (`adjoint::rules::nn`).
    (
        "softmax_cross_entropy",
        rule!(
            "softmax_cross_entropy",
            2,
            [
                pb!("softmax_cross_entropy_pb_logits" [Operand(0), Operand(1)]),
                pb!("softmax_cross_entropy_pb_labels" [Operand(0), Operand(1)])
            ]
        ),
    ),
    (
        "softmax_cross_entropy_with_integer_labels",
        rule!(
            "softmax_cross_entropy_with_integer_labels",
            2,
            [
                pb!("softmax_cross_entropy_with_integer_labels_pb" [Operand(0), Operand(1)]),
                None
            ]
        ),
    ),
    // What forward mode writes for `softmax` and `log_softmax` (`y`, `dx`, axis).
    (
        "softmax_tangent",
        rule!(
            "softmax_tangent",
            2,
            [
                pb!("softmax_tangent_pb_y" [Operand(0), Operand(1), Const(0)]),
                pb!("softmax_tangent_pb_dx" [Operand(0), Const(0)])
            ]
        ),
    ),
    (
        "log_softmax_tangent",
        rule!(
            "log_softmax_tangent",
            2,
            [
                pb!("log_softmax_tangent_pb_y" [Operand(0), Operand(1), Const(0)]),
                pb!("log_softmax_tangent_pb_dx" [Operand(0), Const(0)])
            ]
        ),
    ),
    // What forward mode writes for a tangent passed by value: a copy of its type.
    ("dup", rule!("dup", 1, [pb!("identity_pb" [])])),
    // What forward mode writes for a tuple's field (see `FIELD`).
    (
        "field",
        rule!("field", 1, [pb!("field_pb" [Operand(0), Const(0)])]).view(),
    ),
    // A subview replaced (`adjoint::rules::shape::put_index_axis`): x, y, axis, i.
    (
        "put_index_axis",
        rule!(
            "put_index_axis",
            2,
            [
                pb!("put_index_axis_pb_x" [Const(0), Const(1)]),
                pb!("put_index_axis_pb_y" [Const(0), Const(1)])
            ]
        ),
    ),
    // Convolution (`adjoint::rules::conv`): input, kernel, then the spec.
    (
        "conv",
        rule!(
            "conv",
            2,
            [
                pb!("conv_pb_x" [Operand(0), Operand(1), Const(0)]),
                pb!("conv_pb_k" [Operand(0), Operand(1), Const(0)])
            ]
        ),
    ),
    // Pooling (`adjoint::rules::pool`): the input, then window, strides, padding.
    (
        "avg_pool",
        rule!(
            "avg_pool",
            1,
            [pb!("avg_pool_pb" [Operand(0), Const(0), Const(1), Const(2)])]
        ),
    ),
    (
        "max_pool",
        rule!(
            "max_pool",
            1,
            [pb!("max_pool_pb" [Operand(0), Const(0), Const(1), Const(2)])]
        ),
    ),
    (
        "min_pool",
        rule!(
            "min_pool",
            1,
            [pb!("min_pool_pb" [Operand(0), Const(0), Const(1), Const(2)])]
        ),
    ),
    // What forward mode writes for `max_pool` and `min_pool` (`x`, `dx`).
    (
        "max_pool_tangent",
        rule!(
            "max_pool_tangent",
            2,
            [
                pb!("max_pool_tangent_pb_x" [Operand(0), Const(0), Const(1), Const(2)]),
                pb!("max_pool_pb" [Operand(0), Const(0), Const(1), Const(2)])
            ]
        ),
    ),
    (
        "min_pool_tangent",
        rule!(
            "min_pool_tangent",
            2,
            [
                pb!("min_pool_tangent_pb_x" [Operand(0), Const(0), Const(1), Const(2)]),
                pb!("min_pool_pb" [Operand(0), Const(0), Const(1), Const(2)])
            ]
        ),
    ),
    // What forward mode writes for `a + b` (or `a - b`) when only `a` has a tangent:
    // `da` broadcast to the sum's shape, without adding a zero of `b`'s (`b` is
    // read for its shape only, through `no_grad`).
    (
        "widen",
        rule!("widen", 2, [pb!("add_pb_lhs"[Shape(0)]), None]).elementwise(),
    ),
    // What the input gradient written back as source (`crate::transpose`) writes for
    // an operand of a broadcasting operation (the cotangent summed to its shape) and
    // for a sum (the cotangent at every element of the operand's shape).
    (
        "sum_to",
        rule!("sum_to", 1, [pb!("sum_to_pb" [Shape(0), Const(0)])]).consts_by_ref(),
    ),
    (
        "broadcast_to",
        rule!("broadcast_to", 1, [pb!("broadcast_to_pb"[Const(0)])]).consts_by_ref(),
    ),
    // What forward mode writes for `tanh` and `sigmoid` (`y`, `dx`): differentiated
    // again by second order.
    (
        "tanh_tangent",
        rule!(
            "tanh_tangent",
            2,
            [
                pb!("tanh_tangent_pb_y" [Operand(0), Operand(1)]),
                pb!("tanh_tangent_pb_dx"[Operand(0)])
            ]
        )
        .elementwise()
        .joint(pb!("tanh_tangent_pb_both" [Operand(0), Operand(1)])),
    ),
    (
        "sigmoid_tangent",
        rule!(
            "sigmoid_tangent",
            2,
            [
                pb!("sigmoid_tangent_pb_y" [Operand(0), Operand(1)]),
                pb!("sigmoid_tangent_pb_dx"[Operand(0)])
            ]
        )
        .elementwise()
        .joint(pb!("sigmoid_tangent_pb_both" [Operand(0), Operand(1)])),
    ),
];

/// Activations with their own rules (`adjoint::rules::activation`): `name(&x, params..)`
/// and its derivative `name_d1`, which forward mode writes and second order
/// differentiates again. Each pullback reads the operand and the parameters.
macro_rules! activation_table {
    ($($name:literal, $pb:literal, $d1:literal, $d1_pb:literal [$($c:literal),*];)*) => {
        static ACTIVATIONS: &[(&str, Rule)] = &[
            $(
                ($name, rule!($name, 1, [pb!($pb [Operand(0) $(, Const($c))*])]).elementwise()),
                ($d1, rule!($d1, 1, [pb!($d1_pb [Operand(0) $(, Const($c))*])]).elementwise()),
            )*
        ];
    };
}

activation_table! {
    "relu6", "relu6_pb", "relu6_d1", "relu6_d1_pb" [];
    "log_sigmoid", "log_sigmoid_pb", "log_sigmoid_d1", "log_sigmoid_d1_pb" [];
    "silu", "silu_pb", "silu_d1", "silu_d1_pb" [];
    "swish", "silu_pb", "silu_d1", "silu_d1_pb" [];
    "gelu", "gelu_pb", "gelu_d1", "gelu_d1_pb" [];
    "gelu_exact", "gelu_exact_pb", "gelu_exact_d1", "gelu_exact_d1_pb" [];
    "elu", "elu_pb", "elu_d1", "elu_d1_pb" [0];
    "celu", "celu_pb", "celu_d1", "celu_d1_pb" [0];
    "selu", "selu_pb", "selu_d1", "selu_d1_pb" [];
    "leaky_relu", "leaky_relu_pb", "leaky_relu_d1", "leaky_relu_d1_pb" [0];
    "hard_tanh", "hard_tanh_pb", "hard_tanh_d1", "hard_tanh_d1_pb" [];
    "hard_sigmoid", "hard_sigmoid_pb", "hard_sigmoid_d1", "hard_sigmoid_d1_pb" [];
    "hard_silu", "hard_silu_pb", "hard_silu_d1", "hard_silu_d1_pb" [];
    "hard_swish", "hard_silu_pb", "hard_silu_d1", "hard_silu_d1_pb" [];
    "soft_sign", "soft_sign_pb", "soft_sign_d1", "soft_sign_d1_pb" [];
    "mish", "mish_pb", "mish_d1", "mish_d1_pb" [];
}

/// The derivative rules of the activations in the unary table.
static DERIVATIVES: &[(&str, Rule)] = &[
    (
        "relu",
        rule!("relu_d1", 1, [pb!("relu_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "softplus",
        rule!("softplus_d1", 1, [pb!("softplus_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "abs",
        rule!("abs_d1", 1, [pb!("abs_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "cbrt",
        rule!("cbrt_d1", 1, [pb!("cbrt_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "asin",
        rule!("asin_d1", 1, [pb!("asin_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "acos",
        rule!("acos_d1", 1, [pb!("acos_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "log2",
        rule!("log2_d1", 1, [pb!("log2_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "log10",
        rule!("log10_d1", 1, [pb!("log10_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "square",
        rule!("square_d1", 1, [pb!("square_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "ln_1p",
        rule!("ln_1p_d1", 1, [pb!("ln_1p_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "atan",
        rule!("atan_d1", 1, [pb!("atan_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "powi",
        rule!("powi_d1", 1, [pb!("powi_d1_pb"[Operand(0), Const(0)])]).elementwise(),
    ),
    // Of the output (see `forward::rules`).
    (
        "exp_m1",
        rule!("exp_m1_d1", 1, [pb!("exp_m1_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "sqrt",
        rule!("sqrt_d1", 1, [pb!("sqrt_d1_pb"[Operand(0)])]).elementwise(),
    ),
    (
        "tan",
        rule!("tan_d1", 1, [pb!("tan_d1_pb"[Operand(0)])]).elementwise(),
    ),
];

/// The derivative rule forward mode writes for activation `name` (`gelu_d1`).
pub fn activation_derivative(name: &str) -> Option<&'static str> {
    let pairs = ACTIVATIONS.chunks(2).map(|pair| (pair[0].0, &pair[1].1));
    DERIVATIVES
        .iter()
        .map(|(n, r)| (*n, r))
        .chain(pairs)
        .find(|(n, _)| *n == name)
        .map(|(_, d1)| d1.func)
}

/// `concatenate(axis, &[..])` and `stack(axis, &[..])`: any number of operands.
pub static CONCATENATE: Rule = rule!("concatenate", 0, [pb!("concatenate_pb" [])]);
pub static STACK: Rule = rule!("stack", 0, [pb!("stack_pb" [])]);
/// A tuple of values passed as one (`f((c, h), x)`): its cotangent is taken apart
/// into the fields' (special forms in `reverse`).
pub static TUPLE: Rule = rule!("tuple", 0, [pb!("tuple_pb" [])]);
/// Field `I` of a tuple the body did not make (`t.1`, `let (a, b) = t;` of a
/// parameter), the index a constant `At::<I>`: a reference into the tuple.
pub static FIELD: Rule = rule!("field", 1, [pb!("field_pb" [Operand(0), Const(0)])]).view();
/// `ndarray::array![a, b, ..]` of scalars, its shape the one constant.
pub static FROM_ELEMS: Rule = rule!("from_elems", 0, [pb!("from_elems_pb" [])]);

/// Methods whose result has no derivative (shapes, tests, rounding): a call on an
/// active value is a constant.
pub static CONSTANT_METHODS: &[&str] = &[
    "len",
    "len_of",
    "is_empty",
    "shape",
    "dim",
    "raw_dim",
    "ndim",
    "nrows",
    "ncols",
    "strides",
    "is_nan",
    "is_finite",
    "is_infinite",
    "is_sign_positive",
    "is_sign_negative",
    "signum",
    "floor",
    "ceil",
    "round",
    "trunc",
    "fract",
    "is_standard_layout",
    "argmax",
    "partial_cmp",
    "total_cmp",
];

/// Methods that return their receiver, borrowed (`x.as_ref()`, `x.borrow()`).
pub static IDENTITY_METHODS: &[&str] = &["as_ref", "borrow"];

/// The rule for method `name` with `args` arguments, if it is a primitive.
pub fn method(name: &str) -> Option<&'static Rule> {
    UNARY
        .iter()
        .chain(METHODS)
        .find(|(n, _)| *n == name)
        .map(|(_, r)| r)
}

/// The rule of an elementwise method of one operand (`tanh`, `exp`, `relu`..),
/// which generated code also calls as `__private::name(&x)`.
pub fn unary(name: &str) -> Option<&'static Rule> {
    UNARY.iter().find(|(n, _)| *n == name).map(|(_, r)| r)
}

/// The rule for a method the user unwraps (`mean`, `mean_axis`, reshapes).
pub fn unwrapped_method(name: &str) -> Option<&'static Rule> {
    UNWRAPPED.iter().find(|(n, _)| *n == name).map(|(_, r)| r)
}

/// The rule for a free function of `adjoint::nn` called by its last path segment
/// (the internal ones only through `adjoint::__private`, see [`INTERNAL`]).
pub fn function(path: &syn::Path) -> Option<&'static Rule> {
    let name = path.segments.last()?.ident.to_string();
    let private = path.segments.iter().any(|s| s.ident == "__private");
    function_named(&name, private)
}

/// The rule a call of `name` names, `private` when written through
/// `adjoint::__private`.
fn function_named(name: &str, private: bool) -> Option<&'static Rule> {
    if !private && INTERNAL.contains(&name) {
        return None;
    }
    FUNCTIONS
        .iter()
        .chain(ACTIVATIONS)
        .find(|(n, _)| *n == name)
        .or_else(|| DERIVATIVES.iter().find(|(_, r)| private && r.func == name))
        .or_else(|| UNARY.iter().find(|(n, _)| private && *n == name))
        .map(|(_, r)| r)
}

/// Whether a call of a function of this name (unqualified) is taken for one of the
/// rules: what a `#[differentiable]` function must not be named.
pub fn is_rule_name(name: &str) -> bool {
    function_named(name, false).is_some() || elementwise_function(name).is_some()
}

/// The rules only generated code calls, always as `::adjoint::__private::name(..)`
/// (forward mode's tangents and reads; the derivatives too): a user's own function
/// of one of these names is the user's (`field(..)` is not a tuple's field).
const INTERNAL: &[&str] = &[
    "operand",
    "permuted_axes",
    "insert_axis",
    "reversed_axes",
    "dup",
    "field",
    "widen",
    "sum_to",
    "broadcast_to",
    "tanh_tangent",
    "sigmoid_tangent",
    "softmax_tangent",
    "log_softmax_tangent",
    "max_pool_tangent",
    "min_pool_tangent",
];

/// Elementwise functions callable both as `relu(&x)` and as methods of the table.
pub fn elementwise_function(name: &str) -> Option<&'static Rule> {
    match name {
        "relu" | "sigmoid" | "softplus" | "tanh" => method(name),
        _ => None,
    }
}
