//! Records of control flow for the reverse sweep: which arm of an `if` or `match`
//! ran, carrying the values that arm's reverse sweep reads.

macro_rules! branch {
    ($($name:ident($($v:ident),+);)*) => {$(
        #[doc = concat!("Which of ", stringify!($($v),+), " ran, with that arm's saved values.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name<$($v),+> {
            $(
                #[doc = concat!("Arm `", stringify!($v), "` ran.")]
                $v($v),
            )+
        }
    )*};
}

branch! {
    Branch2(Arm0, Arm1);
    Branch3(Arm0, Arm1, Arm2);
    Branch4(Arm0, Arm1, Arm2, Arm3);
    Branch5(Arm0, Arm1, Arm2, Arm3, Arm4);
    Branch6(Arm0, Arm1, Arm2, Arm3, Arm4, Arm5);
    Branch7(Arm0, Arm1, Arm2, Arm3, Arm4, Arm5, Arm6);
    Branch8(Arm0, Arm1, Arm2, Arm3, Arm4, Arm5, Arm6, Arm7);
}

/// The most arms a differentiated `match` may have.
pub const MAX_ARMS: usize = 8;
