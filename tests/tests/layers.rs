//! Flax's layers, case by case against `reference/layers.json` (from
//! `gen_layers.py`, real Flax): the tree `init` builds, then for the reference's
//! variables the output, `loss = sum(sin(output))`, its gradients with respect to
//! the params and the input, and the collections the layer updates.

use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint_tests::{
    array, assert_close, assert_tree_close, max_rel_err, reference, scalar, tree_text,
};
use ndarray::{Array2, Array3, ArrayD, Axis};
use serde_json::Value as Json;

const RTOL: f64 = 1e-9;

fn case(name: &str) -> Json {
    reference("layers.json", "layers")[name].clone()
}

/// The case's input as a 2-D array.
fn input2(case: &Json) -> Array2<f64> {
    array(&case["inputs"]["x"]).into_dimensionality().unwrap()
}

/// Checks the output, the loss and its gradients of `|v, x| -> (y, updated)` (a
/// layer applied to variables, `x` of type `$ty`) against the case, and the
/// collections it updated; prints the largest normwise relative error
/// (`--nocapture`).
macro_rules! check_layer {
    ($name:expr, $case:expr, $x:expr, $ty:ty, |$v:ident, $xi:ident| $apply:expr) => {{
        let (name, case, x) = ($name, &$case, &$x);
        let vars = adjoint_tests::variables(&case["variables"]);
        let (y, updated) = {
            let ($v, $xi) = (&vars, x);
            $apply
        };
        let y = y.clone().into_dyn();
        assert_close(name, &y, &array(&case["output"]), RTOL);
        let mut worst = max_rel_err(&y, &array(&case["output"]));
        if case["updated"].as_object().is_some_and(|u| !u.is_empty()) {
            worst = worst.max(assert_tree_close(name, &updated, &case["updated"], RTOL));
        }
        // The gradients with respect to the params, every other collection constant
        // (Flax's `{'params': params, **state}`).
        let params = vars.only(&["params"]);
        let state = vars.only(&["batch_stats"]);
        let (loss, (gp, gx)) = value_and_grad!(|p: &Variables, x: &$ty| {
            let $v = &p.merge(&state);
            let $xi = x;
            let (y, _) = $apply;
            y.sin().sum()
        })(&params, x);
        assert_close(name, &scalar(loss), &array(&case["loss"]), RTOL);
        worst = worst.max(max_rel_err(&scalar(loss), &array(&case["loss"])));
        let want = serde_json::json!({ "params": case["grads"]["params"] });
        worst = worst.max(assert_tree_close(name, &gp, &want, RTOL));
        if !case["grads"]["x"].is_null() {
            let gx = gx.into_dyn();
            assert_close(name, &gx, &array(&case["grads"]["x"]), RTOL);
            worst = worst.max(max_rel_err(&gx, &array(&case["grads"]["x"])));
        }
        eprintln!("{name}: normwise relative error {worst:.1e}");
    }};
}

/// The case's input, of any rank.
fn input(case: &Json) -> ArrayD<f64> {
    array(&case["inputs"]["x"])
}

/// Checks the tree `init` builds against Flax's.
fn check_init(case: &Json, vars: &Variables) {
    assert_eq!(vars.shapes(), tree_text(&case["init_variables_shapes"]));
}

#[test]
fn batch_norm_train() {
    let case = case("batch_norm_train");
    let x = input2(&case);
    let bn = nn::BatchNorm::new()
        .use_running_average(false)
        .momentum(0.9);
    assert_eq!(
        bn.init(0, &x).unwrap().shapes(),
        tree_text(&case["init_variables_shapes"])
    );
    let opts = ApplyOptions::new().mutable(["batch_stats"]);
    check_layer!("batch_norm_train", case, x, Array2<f64>, |v, x| bn
        .apply_with(v, &opts, x)
        .unwrap());
}

#[test]
fn batch_norm_eval() {
    let case = case("batch_norm_eval");
    let x = input2(&case);
    let bn = nn::BatchNorm::new().use_running_average(true);
    assert_eq!(
        bn.init(0, &x).unwrap().shapes(),
        tree_text(&case["init_variables_shapes"])
    );
    check_layer!("batch_norm_eval", case, x, Array2<f64>, |v, x| (
        bn.apply(v, x).unwrap(),
        Variables::new()
    ));
}

macro_rules! layer_case {
    ($test:ident, $layer:expr) => {
        #[test]
        fn $test() {
            let name = stringify!($test);
            let case = case(name);
            let x = input(&case);
            let layer = $layer;
            check_init(&case, &layer.init(0, &x).unwrap());
            check_layer!(name, case, x, ArrayD<f64>, |v, x| (
                layer.apply(v, x).unwrap(),
                Variables::new()
            ));
        }
    };
}

layer_case!(dense, nn::Dense::new(4));
layer_case!(dense_no_bias, nn::Dense::new(3).use_bias(false));
layer_case!(dense_3d_input, nn::Dense::new(2));
layer_case!(conv2d_same, nn::Conv::new(4, [3, 3]));
layer_case!(
    conv2d_valid_stride2,
    nn::Conv::new(5, [3, 3])
        .strides([2, 2])
        .padding(nn::Padding::Valid)
);
layer_case!(
    conv2d_dilated,
    nn::Conv::new(2, [2, 2]).kernel_dilation([2, 2])
);
layer_case!(
    conv2d_groups,
    nn::Conv::new(6, [3, 3])
        .feature_group_count(3)
        .use_bias(false)
);
layer_case!(
    conv1d_causal,
    nn::Conv::new(4, [3]).padding(nn::Padding::Causal)
);
layer_case!(
    conv_transpose2d,
    nn::ConvTranspose::new(3, [3, 3]).strides([2, 2])
);

/// `avg_pool` (2, 2)/(2, 2), `max_pool` (3, 3) `SAME` stride 1, flatten, `Dense(2)`.
struct Pools;

#[differentiable]
impl Pools {
    fn call(&self, cx: &mut Scope, x: &ArrayD<f64>) -> ArrayD<f64> {
        let a = nn::avg_pool(x, [2, 2], [2, 2], nn::Padding::Valid);
        let m = nn::max_pool(x, [3, 3], [1, 1], nn::Padding::Same);
        let (n, len) = (a.shape()[0], a.len());
        let flat = a.into_shape_with_order(vec![n, len / n]).unwrap();
        let h = nn::Dense::new(2).call(cx, &flat);
        h + m
            .sum_axis(Axis(3))
            .sum_axis(Axis(2))
            .sum_axis(Axis(1))
            .insert_axis(Axis(1))
    }
}

/// Flax's MNIST-tutorial CNN, shrunk: Conv-relu-avg_pool twice, Dense-relu-Dense.
struct TinyCnn;

#[differentiable]
impl TinyCnn {
    fn call(&self, cx: &mut Scope, x: &ArrayD<f64>) -> ArrayD<f64> {
        let x = nn::relu(&nn::Conv::new(4, [3, 3]).call(cx, x));
        let x = nn::avg_pool(&x, [2, 2], [2, 2], nn::Padding::Valid);
        let x = nn::relu(&nn::Conv::new(6, [3, 3]).call(cx, &x));
        let x = nn::avg_pool(&x, [2, 2], [2, 2], nn::Padding::Valid);
        let (n, len) = (x.shape()[0], x.len());
        let x = x.into_shape_with_order(vec![n, len / n]).unwrap();
        let x = nn::relu(&nn::Dense::new(8).call(cx, &x));
        nn::Dense::new(3).call(cx, &x)
    }
}

layer_case!(layer_norm, nn::LayerNorm::new());
layer_case!(rms_norm, nn::RMSNorm::new());
layer_case!(group_norm, nn::GroupNorm::new(2));
layer_case!(pools, Pools);
layer_case!(tiny_cnn, TinyCnn);

#[test]
fn embed() {
    let case = case("embed");
    let ids: ArrayD<usize> = input(&case).mapv(|v| v as usize);
    let embed = nn::Embed::<f64>::new(10, 4);
    check_init(&case, &embed.init(0, &ids).unwrap());
    let vars = adjoint_tests::variables(&case["variables"]);
    let y = embed.apply(&vars, &ids).unwrap();
    assert_close("embed", &y, &array(&case["output"]), RTOL);
    let (loss, grads) =
        value_and_grad!(|p: &Variables| embed.apply(p, &ids).unwrap().sin().sum())(&vars);
    assert_close("embed", &scalar(loss), &array(&case["loss"]), RTOL);
    let want = serde_json::json!({ "params": case["grads"]["params"] });
    let worst = assert_tree_close("embed", &grads, &want, RTOL);
    eprintln!("embed: normwise relative error {worst:.1e}");
    // The same ids as i64, as Flax passes them.
    let y64 = embed.apply(&vars, &ids.mapv(|i| i as i64)).unwrap();
    assert_eq!(y64, y);
    let bad = ids.mapv(|i| i as i64 - 1);
    assert_eq!(
        embed.apply(&vars, &bad).unwrap_err().to_string(),
        "id -1 is out of range for a table of 10 rows (ids of shape [2, 3])"
    );
}

#[test]
fn conv_input_errors_name_the_layer_and_the_shapes() {
    let x = ArrayD::<f64>::zeros(vec![2, 8, 8, 1]);
    let vars = TinyCnn.init(0, &x).unwrap();
    // Three features where the kernel was made for one.
    let err = TinyCnn
        .apply(&vars, &ArrayD::zeros(vec![2, 8, 8, 3]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "variable `params/Conv_0/kernel` has shape [3, 3, 1, 4], but the module asks for shape [3, 3, 3, 4]"
    );
    // Too few axes for a 2-D convolution.
    let conv = nn::Conv::new(4, [3, 3]);
    let err = conv.init(0, &ArrayD::<f64>::zeros(vec![6, 3])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "an input of shape [6, 3] has too few axes for a 2-D window: it needs 2 spatial axes and a feature axis (and any batch axes before them)"
    );
    // Inside a model, the error says where.
    let err = TinyCnn
        .init(0, &ArrayD::<f64>::zeros(vec![8, 1]))
        .unwrap_err();
    assert!(err.to_string().ends_with("(at `Conv_0`)"), "{err}");
    // Feature groups that do not divide the features.
    let err = nn::Conv::new(4, [3])
        .feature_group_count(3)
        .init(0, &ArrayD::<f64>::zeros(vec![1, 5, 6]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "a kernel of shape [3, 2, 4] has 4 output features, which 3 feature groups do not divide"
    );
}

/// Flax's `MultiHeadDotProductAttention(num_heads=2, qkv_features=8)` with a causal
/// mask made inside the module.
struct CausalSelfAttention;

#[differentiable]
impl CausalSelfAttention {
    fn call(&self, cx: &mut Scope, x: &Array3<f64>) -> Array3<f64> {
        let mask = nn::make_causal_mask(x.shape()[0], x.shape()[1]);
        let mha = nn::MultiHeadDotProductAttention::new(2).qkv_features(8);
        mha.call(cx, x, x, x, Some(&mask))
    }
}

#[test]
fn attention_self() {
    let case = case("attention_self");
    let x: Array3<f64> = input(&case).into_dimensionality().unwrap();
    let mha = nn::MultiHeadDotProductAttention::new(2).qkv_features(8);
    check_init(&case, &mha.init(0, &x, &x, &x, None).unwrap());
    check_layer!("attention_self", case, x, Array3<f64>, |v, x| (
        mha.apply(v, x, x, x, None).unwrap(),
        Variables::new()
    ));
}

#[test]
fn attention_masked() {
    let case = case("attention_masked");
    let x: Array3<f64> = input(&case).into_dimensionality().unwrap();
    check_init(&case, &CausalSelfAttention.init(0, &x).unwrap());
    check_layer!("attention_masked", case, x, Array3<f64>, |v, x| (
        CausalSelfAttention.apply(v, x).unwrap(),
        Variables::new()
    ));
}

#[test]
fn lstm_scan() {
    let case = case("lstm_scan");
    let x: Array3<f64> = input(&case).into_dimensionality().unwrap();
    let rnn = nn::RNN::new(nn::LSTMCell::new(5));
    check_init(&case, &rnn.init(0, &x).unwrap());
    check_layer!("lstm_scan", case, x, Array3<f64>, |v, x| (
        rnn.apply(v, x).unwrap(),
        Variables::new()
    ));
}

#[test]
fn gru_scan() {
    let case = case("gru_scan");
    let x: Array3<f64> = input(&case).into_dimensionality().unwrap();
    let rnn = nn::RNN::new(nn::GRUCell::new(4));
    check_init(&case, &rnn.init(0, &x).unwrap());
    check_layer!("gru_scan", case, x, Array3<f64>, |v, x| (
        rnn.apply(v, x).unwrap(),
        Variables::new()
    ));
}

/// `recurrent.json` (from `gen_recurrent.py`): `nn.RNN` forwards, backwards with and
/// without `keep_order`, and from an initial carry returning the last one.
fn recurrent(name: &str) -> Json {
    reference("recurrent.json", name)
}

macro_rules! rnn_case {
    ($test:ident, $rnn:expr) => {
        #[test]
        fn $test() {
            let name = stringify!($test);
            let case = recurrent(name);
            let x: Array3<f64> = input(&case).into_dimensionality().unwrap();
            let rnn = $rnn;
            check_init(&case, &rnn.init(0, &x).unwrap());
            check_layer!(name, case, x, Array3<f64>, |v, x| (
                rnn.apply(v, x).unwrap(),
                Variables::new()
            ));
        }
    };
}

rnn_case!(simple_forward, nn::RNN::new(nn::SimpleCell::new(4)));
rnn_case!(
    simple_reverse,
    nn::RNN::new(nn::SimpleCell::new(4)).reverse(true)
);
rnn_case!(
    gru_reverse_keep_order,
    nn::RNN::new(nn::GRUCell::new(4))
        .reverse(true)
        .keep_order(true)
);

/// `RNN::scan` from an initial carry, returning the last: bound as `rnn` (the
/// reference's tree is re-rooted there).
struct ScanWithCarry;

#[differentiable]
impl ScanWithCarry {
    fn call(&self, cx: &mut Scope, carry: &(Array2<f64>, Array2<f64>), x: &Array3<f64>) -> f64 {
        let rnn = cx.bind_as("rnn", nn::RNN::new(nn::LSTMCell::new(3)));
        let ((c, h), out) = rnn.scan(cx, carry, x);
        c.sin().sum() + h.sin().sum() + out.sin().sum()
    }
}

#[test]
fn lstm_initial_carry_return_carry() {
    let case = recurrent("lstm_initial_carry_return_carry");
    let x: Array3<f64> = input(&case).into_dimensionality().unwrap();
    let carry: (Array2<f64>, Array2<f64>) = (
        array(&case["inputs"]["carry"][0])
            .into_dimensionality()
            .unwrap(),
        array(&case["inputs"]["carry"][1])
            .into_dimensionality()
            .unwrap(),
    );
    let reroot = |tree: &Json| serde_json::json!({ "params": { "rnn": tree["params"] } });
    let vars = adjoint_tests::variables(&reroot(&case["variables"]));
    let (loss, grads) = value_and_grad!(|v: &Variables, x: &Array3<f64>| ScanWithCarry
        .apply(v, &carry, x)
        .unwrap())(&vars, &x);
    assert_close("lstm carry", &scalar(loss), &array(&case["loss"]), RTOL);
    let worst = assert_tree_close("lstm carry", &grads.0, &reroot(&case["grads"]), RTOL);
    assert_close(
        "lstm carry",
        &grads.1.into_dyn(),
        &array(&case["grads"]["x"]),
        RTOL,
    );
    eprintln!("lstm_initial_carry_return_carry: normwise relative error {worst:.1e}");
}

/// An output layer tied to the embedding (`Embed.attend`).
struct Tied;

#[differentiable]
impl Tied {
    fn call(&self, cx: &mut Scope, ids: &ndarray::Array1<usize>, q: &Array2<f64>) -> f64 {
        let embed = cx.bind_as("embed", nn::Embed::<f64>::new(5, 3));
        let h = embed.call(cx, ids) + q;
        embed.attend(cx, &h).sin().sum()
    }
}

/// A method of a generic module (`impl<A: Real> Embed<A>`) differentiates its
/// arguments of the impl's float type: `attend`'s query (it was once a constant).
#[test]
fn embed_attend_differentiates_the_query() {
    let ids = ndarray::array![1usize, 4, 0];
    let q = Array2::from_shape_fn((3, 3), |(i, j)| (i as f64 - 0.5 * j as f64).sin());
    let vars = Tied.init(0, &ids, &q).unwrap();
    let (gv, gq) =
        grad!(|v: &Variables, q: &Array2<f64>| Tied.apply(v, &ids, q).unwrap())(&vars, &q);
    adjoint::check::check_grad(
        |q: &Array2<f64>| Tied.apply(&vars, &ids, q).unwrap(),
        &q,
        &gq,
        adjoint::check::Tolerance::default(),
    )
    .unwrap();
    assert!(gq.iter().any(|g| g.abs() > 1e-3));
    assert_eq!(gv.shapes(), vars.shapes());
}

nn::sequential! {
    /// Flax's `nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3), nn.tanh, nn.Dense(2)])`.
    struct SeqMlp(x: &Array2<f64>) -> Array2<f64> [
        nn::Dense::new(4),
        nn::relu,
        nn::Dense::new(3),
        |h| h.tanh(),
        nn::Dense::new(2),
    ]
}

/// `reference/sequential.json` (`gen_sequential.py`): the tree (`layers_0`,
/// `layers_2`, `layers_4`: list indices, functions counted), the output and the
/// gradients.
#[test]
fn sequential_of_modules_and_functions() {
    let case = reference("sequential.json", "mlp");
    let x = input2(&case);
    check_init(&case, &SeqMlp.init(0, &x).unwrap());
    check_layer!("sequential", case, x, Array2<f64>, |v, x| (
        SeqMlp.apply(v, x).unwrap(),
        Variables::new()
    ));
}
