    pub fn __call_body_vjpx(
        &self,
        cx: &mut Scope,
        x: &Array2<f64>,
        __xct: &f64,
    ) -> (Array2<f64>,) {
        let __module = ::adjoint::no_grad(cx.bind_local(Dense::new(32)));
        let __v1 = ::adjoint::scope::Child::module(&__module);
        let __v2 = ::adjoint::no_grad(
            (::adjoint::scope::Child::child_name(
                &__module,
                ::core::option::Option::None,
            )),
        );
        let __v3 = __v1.__call_in(cx, __v2, x);
        let __xp___t3 = ::adjoint::no_grad(cx.last_child_path());
        let h1 = __v3.tanh();
        let __module_1 = ::adjoint::no_grad(cx.bind_local(Dense::new(32)));
        let __v6 = ::adjoint::scope::Child::module(&__module_1);
        let __v7 = ::adjoint::no_grad(
            (::adjoint::scope::Child::child_name(
                &__module_1,
                ::core::option::Option::None,
            )),
        );
        let __v8 = __v6.__call_in(cx, __v7, &h1);
        let __xp___t8 = ::adjoint::no_grad(cx.last_child_path());
        let h2 = __v8.tanh();
        let __module_2 = ::adjoint::no_grad(cx.bind_local(Dense::new(1)));
        let __v11 = ::adjoint::scope::Child::module(&__module_2);
        let __v12 = ::adjoint::no_grad(
            (::adjoint::scope::Child::child_name(
                &__module_2,
                ::core::option::Option::None,
            )),
        );
        let __v13 = __v11.__call_in(cx, __v12, &h2);
        let __xp___t13 = ::adjoint::no_grad(cx.last_child_path());
        let __xs___t13 = ::adjoint::no_grad(::adjoint::__private::shape_of(&__v13));
        let __xb1 = ::adjoint::__private::broadcast_to(__xct, &__xs___t13);
        let (__xb2,) = __v11
            .__call_in_vjpx(
                cx,
                ::adjoint::scope::ChildName::Bound(&__xp___t13),
                &h2,
                &__xb1,
            );
        let __xb3 = ::adjoint::__private::tanh_tangent(
            &h2,
            &(::adjoint::__private::operand(&__xb2)),
        );
        let (__xb4,) = __v6
            .__call_in_vjpx(
                cx,
                ::adjoint::scope::ChildName::Bound(&__xp___t8),
                &h1,
                &__xb3,
            );
        let __xb5 = ::adjoint::__private::tanh_tangent(
            &h1,
            &(::adjoint::__private::operand(&__xb4)),
        );
        let (__xb6,) = __v1
            .__call_in_vjpx(
                cx,
                ::adjoint::scope::ChildName::Bound(&__xp___t3),
                x,
                &__xb5,
            );
        (__xb6,)
    }
