//! The kernel builder: a thin layer over inkwell for writing kernels as loops over memory.
//! Loop counters and accumulators live in allocas; LLVM's `default<O3>` pipeline promotes
//! them to registers and vectorizes the loops for the target's vector width.
//!
//! Every kernel has the signature `void kernel(const i64 *args, i64 begin, i64 end)`: the
//! schedule packs pointers and sizes into `args`, and the work items `begin..end` are what a
//! `parallel_for` hook splits among threads.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicTypeEnum, FloatType, IntType, VectorType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue,
    PointerValue, VectorValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

/// Fast-math flags for kernel float arithmetic: reassociation (so reductions vectorize) and
/// contraction (FMA), but NaN and infinity keep their meaning (masks use -inf).
pub fn fm_flags() -> inkwell::values::FastMathFlags {
    use inkwell::values::FastMathFlags as F;
    F::AllowReassoc | F::AllowContract | F::NoSignedZeros | F::AllowReciprocal | F::ApproxFunc
}

/// A mutable local (an alloca), for loop-carried values.
#[derive(Clone, Copy)]
pub struct Var<'ctx> {
    pub ptr: PointerValue<'ctx>,
    pub ty: BasicTypeEnum<'ctx>,
}

pub struct Kb<'a, 'ctx> {
    pub cx: &'ctx Context,
    pub m: &'a Module<'ctx>,
    pub b: Builder<'ctx>,
    pub f: FunctionValue<'ctx>,
    entry_allocas: inkwell::basic_block::BasicBlock<'ctx>,
}

/// Attributes every generated function gets: no libc calls may be invented for it.
pub fn no_builtins<'ctx>(cx: &'ctx Context, f: FunctionValue<'ctx>) {
    f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("no-builtins", ""),
    );
    f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_enum_attribute(
            inkwell::attributes::Attribute::get_named_enum_kind_id("nounwind"),
            0,
        ),
    );
}

impl<'a, 'ctx> Kb<'a, 'ctx> {
    /// Starts a function with the given type, positioned at its entry.
    pub fn new_fn(
        cx: &'ctx Context,
        m: &'a Module<'ctx>,
        name: &str,
        ty: inkwell::types::FunctionType<'ctx>,
        linkage: Linkage,
    ) -> Kb<'a, 'ctx> {
        let f = m.add_function(name, ty, Some(linkage));
        no_builtins(cx, f);
        let allocas = cx.append_basic_block(f, "allocas");
        let body = cx.append_basic_block(f, "entry");
        let b = cx.create_builder();
        b.position_at_end(allocas);
        b.build_unconditional_branch(body).expect("branch");
        b.position_at_end(body);
        Kb {
            cx,
            m,
            b,
            f,
            entry_allocas: allocas,
        }
    }

    /// Starts a kernel `void name(const i64 *args, i64 begin, i64 end)`.
    pub fn kernel(cx: &'ctx Context, m: &'a Module<'ctx>, name: &str) -> Kb<'a, 'ctx> {
        let ty = cx.void_type().fn_type(
            &[
                cx.ptr_type(AddressSpace::default()).into(),
                cx.i64_type().into(),
                cx.i64_type().into(),
            ],
            false,
        );
        Kb::new_fn(cx, m, name, ty, Linkage::Internal)
    }

    pub fn finish(self) -> FunctionValue<'ctx> {
        self.b.build_return(None).expect("return");
        self.f
    }

    // ---- types and constants ----

    pub fn i64t(&self) -> IntType<'ctx> {
        self.cx.i64_type()
    }
    pub fn i32t(&self) -> IntType<'ctx> {
        self.cx.i32_type()
    }
    pub fn i8t(&self) -> IntType<'ctx> {
        self.cx.i8_type()
    }
    pub fn f32t(&self) -> FloatType<'ctx> {
        self.cx.f32_type()
    }
    pub fn ptrt(&self) -> inkwell::types::PointerType<'ctx> {
        self.cx.ptr_type(AddressSpace::default())
    }
    pub fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.i64t().const_int(v as u64, true)
    }
    pub fn i32c(&self, v: i32) -> IntValue<'ctx> {
        self.i32t().const_int(v as u64, true)
    }
    pub fn f32c(&self, v: f32) -> FloatValue<'ctx> {
        self.f32t().const_float(v as f64)
    }

    // ---- kernel arguments ----

    pub fn param_ptr(&self, i: u32) -> PointerValue<'ctx> {
        self.f.get_nth_param(i).expect("param").into_pointer_value()
    }
    pub fn param_int(&self, i: u32) -> IntValue<'ctx> {
        self.f.get_nth_param(i).expect("param").into_int_value()
    }
    /// `args[k]` of a kernel as an integer.
    pub fn arg(&self, k: u32) -> IntValue<'ctx> {
        let p = self.gep(self.i64t().into(), self.param_ptr(0), self.i64c(k as i64));
        let v = self
            .b
            .build_load(self.i64t(), p, "arg")
            .expect("load")
            .into_int_value();
        mark_invariant(self.cx, v);
        v
    }
    /// `args[k]` of a kernel as a pointer.
    pub fn arg_ptr(&self, k: u32) -> PointerValue<'ctx> {
        self.b
            .build_int_to_ptr(self.arg(k), self.ptrt(), "p")
            .expect("inttoptr")
    }
    /// `args[k]` of a kernel as an f32 (its bits in the low half).
    pub fn arg_f32(&self, k: u32) -> FloatValue<'ctx> {
        let lo = self
            .b
            .build_int_truncate(self.arg(k), self.i32t(), "lo")
            .expect("trunc");
        self.b
            .build_bit_cast(lo, self.f32t(), "f")
            .expect("bitcast")
            .into_float_value()
    }
    pub fn begin(&self) -> IntValue<'ctx> {
        self.param_int(1)
    }
    pub fn end(&self) -> IntValue<'ctx> {
        self.param_int(2)
    }

    // ---- memory ----

    pub fn gep(
        &self,
        elem: BasicTypeEnum<'ctx>,
        p: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> PointerValue<'ctx> {
        // SAFETY (LLVM semantics): the index stays inside the buffer the schedule planned.
        unsafe {
            self.b
                .build_in_bounds_gep(elem, p, &[i], "gep")
                .expect("gep")
        }
    }
    pub fn load(
        &self,
        ty: BasicTypeEnum<'ctx>,
        p: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> BasicValueEnum<'ctx> {
        let v = self
            .b
            .build_load(ty, self.gep(ty, p, i), "ld")
            .expect("load");
        if let Some(inst) = v.as_instruction_value() {
            let _ = inst.set_alignment(elem_align(ty));
        }
        v
    }
    pub fn store(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>, v: impl BasicValue<'ctx>) {
        let ty = v.as_basic_value_enum().get_type();
        let st = self.b.build_store(self.gep(ty, p, i), v).expect("store");
        let _ = st.set_alignment(elem_align(ty));
    }
    pub fn load_f32(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>) -> FloatValue<'ctx> {
        self.load(self.f32t().into(), p, i).into_float_value()
    }
    pub fn load_i64(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>) -> IntValue<'ctx> {
        self.load(self.i64t().into(), p, i).into_int_value()
    }
    /// A hint to bring the cache line holding byte `i` of `p` into the cache for reading. It
    /// never faults, so `i` may point past the buffer (the address is not `inbounds`).
    pub fn prefetch(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>) {
        // SAFETY (LLVM semantics): a plain gep is defined for any offset; prefetch only hints.
        let ptr = unsafe { self.b.build_gep(self.i8t(), p, &[i], "pf") }.expect("gep");
        let f = Intrinsic::find("llvm.prefetch")
            .expect("llvm.prefetch")
            .get_declaration(self.m, &[ptr.get_type().into()])
            .expect("declaration of llvm.prefetch");
        let c = |x: i32| self.i32c(x).into();
        // read, keep in all levels, data cache
        self.b
            .build_call(f, &[ptr.into(), c(0), c(3), c(1)], "")
            .expect("call");
    }
    /// A vector load of `lanes` elements starting at element `i` (element alignment).
    pub fn vload(
        &self,
        elem: BasicTypeEnum<'ctx>,
        lanes: u32,
        p: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let vt = vec_of(elem, lanes);
        let ptr = self.gep(elem, p, i);
        let v = self.b.build_load(vt, ptr, "vld").expect("load");
        let _ = v
            .as_instruction_value()
            .expect("inst")
            .set_alignment(elem_align(elem));
        v.into_vector_value()
    }
    pub fn vstore(&self, p: PointerValue<'ctx>, i: IntValue<'ctx>, v: VectorValue<'ctx>) {
        let elem = v.get_type().get_element_type();
        let st = self.b.build_store(self.gep(elem, p, i), v).expect("store");
        let _ = st.set_alignment(elem_align(elem));
    }

    // ---- locals and control flow ----

    /// A local initialized to `init`, allocated in the entry block.
    pub fn var(&self, init: impl BasicValue<'ctx>) -> Var<'ctx> {
        let init = init.as_basic_value_enum();
        let ty = init.get_type();
        let here = self.b.get_insert_block().expect("block");
        match self.entry_allocas.get_first_instruction() {
            Some(i) => self.b.position_before(&i),
            None => self.b.position_at_end(self.entry_allocas),
        }
        let ptr = self.b.build_alloca(ty, "var").expect("alloca");
        self.b.position_at_end(here);
        self.b.build_store(ptr, init).expect("store");
        Var { ptr, ty }
    }
    /// A local array of `n` elements of `ty`, allocated in the entry block.
    pub fn array(&self, ty: inkwell::types::IntType<'ctx>, n: u32) -> PointerValue<'ctx> {
        let here = self.b.get_insert_block().expect("block");
        match self.entry_allocas.get_first_instruction() {
            Some(i) => self.b.position_before(&i),
            None => self.b.position_at_end(self.entry_allocas),
        }
        let ptr = self
            .b
            .build_alloca(ty.array_type(n), "array")
            .expect("alloca");
        self.b.position_at_end(here);
        ptr
    }
    pub fn get(&self, v: Var<'ctx>) -> BasicValueEnum<'ctx> {
        self.b.build_load(v.ty, v.ptr, "v").expect("load")
    }
    pub fn geti(&self, v: Var<'ctx>) -> IntValue<'ctx> {
        self.get(v).into_int_value()
    }
    pub fn getf(&self, v: Var<'ctx>) -> FloatValue<'ctx> {
        self.get(v).into_float_value()
    }
    pub fn set(&self, v: Var<'ctx>, x: impl BasicValue<'ctx>) {
        self.b.build_store(v.ptr, x).expect("store");
    }

    /// `for i in lo..hi (step) { body(i) }`.
    pub fn for_range(
        &mut self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        step: i64,
        mut body: impl FnMut(&mut Self, IntValue<'ctx>),
    ) {
        let i = self.var(lo);
        let head = self.cx.append_basic_block(self.f, "for.head");
        let bodyb = self.cx.append_basic_block(self.f, "for.body");
        let exit = self.cx.append_basic_block(self.f, "for.exit");
        self.b.build_unconditional_branch(head).expect("br");
        self.b.position_at_end(head);
        let iv = self.geti(i);
        let c = self
            .b
            .build_int_compare(IntPredicate::SLT, iv, hi, "c")
            .expect("cmp");
        self.b.build_conditional_branch(c, bodyb, exit).expect("br");
        self.b.position_at_end(bodyb);
        let iv = self.geti(i);
        body(self, iv);
        let iv = self.geti(i);
        let next = self
            .b
            .build_int_add(iv, self.i64c(step), "next")
            .expect("add");
        self.set(i, next);
        self.b.build_unconditional_branch(head).expect("br");
        self.b.position_at_end(exit);
    }

    /// `if cond { then() }`.
    pub fn if_then(&mut self, cond: IntValue<'ctx>, then: impl FnOnce(&mut Self)) {
        let tb = self.cx.append_basic_block(self.f, "then");
        let join = self.cx.append_basic_block(self.f, "join");
        self.b.build_conditional_branch(cond, tb, join).expect("br");
        self.b.position_at_end(tb);
        then(self);
        self.b.build_unconditional_branch(join).expect("br");
        self.b.position_at_end(join);
    }

    /// `if cond { then() } else { other() }`.
    pub fn if_else(
        &mut self,
        cond: IntValue<'ctx>,
        then: impl FnOnce(&mut Self),
        other: impl FnOnce(&mut Self),
    ) {
        let tb = self.cx.append_basic_block(self.f, "then");
        let eb = self.cx.append_basic_block(self.f, "else");
        let join = self.cx.append_basic_block(self.f, "join");
        self.b.build_conditional_branch(cond, tb, eb).expect("br");
        self.b.position_at_end(tb);
        then(self);
        self.b.build_unconditional_branch(join).expect("br");
        self.b.position_at_end(eb);
        other(self);
        self.b.build_unconditional_branch(join).expect("br");
        self.b.position_at_end(join);
    }

    /// Returns from the function with `v` when `cond` holds.
    pub fn return_if(&mut self, cond: IntValue<'ctx>, v: Option<&dyn BasicValue<'ctx>>) {
        let tb = self.cx.append_basic_block(self.f, "ret");
        let join = self.cx.append_basic_block(self.f, "cont");
        self.b.build_conditional_branch(cond, tb, join).expect("br");
        self.b.position_at_end(tb);
        self.b.build_return(v).expect("ret");
        self.b.position_at_end(join);
    }

    // ---- integer arithmetic ----

    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_add(a, b, "").expect("add")
    }
    pub fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_sub(a, b, "").expect("sub")
    }
    pub fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_mul(a, b, "").expect("mul")
    }
    pub fn sdiv(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_signed_div(a, b, "").expect("div")
    }
    pub fn srem(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_signed_rem(a, b, "").expect("rem")
    }
    pub fn icmp(&self, p: IntPredicate, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_compare(p, a, b, "").expect("cmp")
    }
    pub fn imin(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        let c = self.icmp(IntPredicate::SLT, a, b);
        self.select(c, a, b).into_int_value()
    }
    pub fn imax(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        let c = self.icmp(IntPredicate::SGT, a, b);
        self.select(c, a, b).into_int_value()
    }
    pub fn select<V: BasicValue<'ctx>>(
        &self,
        c: IntValue<'ctx>,
        a: V,
        b: V,
    ) -> BasicValueEnum<'ctx> {
        self.b.build_select(c, a, b, "").expect("select")
    }
    pub fn sext(&self, v: IntValue<'ctx>, to: IntType<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_s_extend(v, to, "").expect("sext")
    }
    pub fn zext(&self, v: IntValue<'ctx>, to: IntType<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_z_extend(v, to, "").expect("zext")
    }
    pub fn trunc(&self, v: IntValue<'ctx>, to: IntType<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_truncate(v, to, "").expect("trunc")
    }

    // ---- float arithmetic (scalars or vectors), with the kernel fast-math flags ----

    fn fm(&self, v: impl BasicValue<'ctx>) {
        if let Some(i) = v.as_instruction_value() {
            let _ = i.set_fast_math_flags(fm_flags());
        }
    }
    pub fn fadd<T: inkwell::values::FloatMathValue<'ctx>>(&self, a: T, b: T) -> T {
        let v = self.b.build_float_add(a, b, "").expect("fadd");
        self.fm(v.as_basic_value_enum());
        v
    }
    pub fn fsub<T: inkwell::values::FloatMathValue<'ctx>>(&self, a: T, b: T) -> T {
        let v = self.b.build_float_sub(a, b, "").expect("fsub");
        self.fm(v.as_basic_value_enum());
        v
    }
    pub fn fmul<T: inkwell::values::FloatMathValue<'ctx>>(&self, a: T, b: T) -> T {
        let v = self.b.build_float_mul(a, b, "").expect("fmul");
        self.fm(v.as_basic_value_enum());
        v
    }
    pub fn fdiv<T: inkwell::values::FloatMathValue<'ctx>>(&self, a: T, b: T) -> T {
        let v = self.b.build_float_div(a, b, "").expect("fdiv");
        self.fm(v.as_basic_value_enum());
        v
    }
    pub fn fneg(&self, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.b.build_float_neg(a, "").expect("fneg")
    }
    pub fn fcmp(
        &self,
        p: FloatPredicate,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> IntValue<'ctx> {
        self.b.build_float_compare(p, a, b, "").expect("fcmp")
    }
    /// `max(a, b)` that propagates NaN (as numpy and ONNX Max do).
    pub fn fmax_nan(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.call_f32_intrinsic("llvm.maximum", &[a, b])
    }
    pub fn fmin_nan(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.call_f32_intrinsic("llvm.minimum", &[a, b])
    }
    /// `max(a, b)` for finite operands (lowers to one instruction).
    pub fn fmax(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let c = self.fcmp(FloatPredicate::OGT, a, b);
        self.select(c, a, b).into_float_value()
    }
    pub fn fmin(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let c = self.fcmp(FloatPredicate::OLT, a, b);
        self.select(c, a, b).into_float_value()
    }
    pub fn sqrt(&self, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.call_f32_intrinsic("llvm.sqrt", &[a])
    }
    pub fn fabs(&self, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.call_f32_intrinsic("llvm.fabs", &[a])
    }
    pub fn fma(
        &self,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
        c: FloatValue<'ctx>,
    ) -> FloatValue<'ctx> {
        self.call_f32_intrinsic("llvm.fmuladd", &[a, b, c])
    }
    pub fn si_to_f32(&self, v: IntValue<'ctx>) -> FloatValue<'ctx> {
        self.b
            .build_signed_int_to_float(v, self.f32t(), "")
            .expect("sitofp")
    }
    pub fn f32_to_si(&self, v: FloatValue<'ctx>, to: IntType<'ctx>) -> IntValue<'ctx> {
        self.b.build_float_to_signed_int(v, to, "").expect("fptosi")
    }
    pub fn f32_bits(&self, v: FloatValue<'ctx>) -> IntValue<'ctx> {
        self.b
            .build_bit_cast(v, self.i32t(), "")
            .expect("bitcast")
            .into_int_value()
    }
    pub fn bits_f32(&self, v: IntValue<'ctx>) -> FloatValue<'ctx> {
        self.b
            .build_bit_cast(v, self.f32t(), "")
            .expect("bitcast")
            .into_float_value()
    }

    /// Calls an overloaded float intrinsic (`llvm.sqrt`, `llvm.fmuladd`, ...) at the type of
    /// its first operand.
    pub fn call_f32_intrinsic(&self, name: &str, args: &[FloatValue<'ctx>]) -> FloatValue<'ctx> {
        let ty = args[0].get_type();
        let f = Intrinsic::find(name)
            .expect("intrinsic")
            .get_declaration(self.m, &[ty.into()])
            .expect("declaration");
        let a: Vec<BasicMetadataValueEnum> = args.iter().map(|&x| x.into()).collect();
        let v = self
            .b
            .build_call(f, &a, "")
            .expect("call")
            .try_as_basic_value()
            .basic()
            .expect("value")
            .into_float_value();
        self.fm(v);
        v
    }

    /// Calls any intrinsic by name with overload types.
    pub fn call_intrinsic(
        &self,
        name: &str,
        overloads: &[BasicTypeEnum<'ctx>],
        args: &[BasicValueEnum<'ctx>],
    ) -> BasicValueEnum<'ctx> {
        let f = Intrinsic::find(name)
            .unwrap_or_else(|| panic!("unknown intrinsic {name}"))
            .get_declaration(self.m, overloads)
            .unwrap_or_else(|| panic!("no declaration of {name}"));
        let a: Vec<BasicMetadataValueEnum> = args.iter().map(|&x| x.into()).collect();
        self.b
            .build_call(f, &a, "")
            .expect("call")
            .try_as_basic_value()
            .basic()
            .expect("value")
    }

    // ---- vectors ----

    /// Lanes `idx` of `a` (each below `a`'s length), in that order.
    pub fn shuffle(&self, a: VectorValue<'ctx>, idx: &[u32]) -> VectorValue<'ctx> {
        let mask =
            VectorType::const_vector(&idx.iter().map(|&i| self.i32c(i as i32)).collect::<Vec<_>>());
        self.b
            .build_shuffle_vector(a, a.get_type().get_poison(), mask, "")
            .expect("shuffle")
    }

    /// Lanes `lo..lo + n` of `a`.
    pub fn lanes(&self, a: VectorValue<'ctx>, lo: u32, n: u32) -> VectorValue<'ctx> {
        self.shuffle(a, &(lo..lo + n).collect::<Vec<_>>())
    }

    /// `a` then `b` (equally long) as one vector.
    pub fn concat(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        let n = a.get_type().get_size();
        let mask =
            VectorType::const_vector(&(0..2 * n).map(|i| self.i32c(i as i32)).collect::<Vec<_>>());
        self.b
            .build_shuffle_vector(a, b, mask, "")
            .expect("shuffle")
    }

    /// Equally long vectors joined end to end, pairwise.
    pub fn concat_all(&self, mut parts: Vec<VectorValue<'ctx>>) -> VectorValue<'ctx> {
        while parts.len() > 1 {
            parts = parts
                .chunks(2)
                .map(|p| {
                    if p.len() == 2 {
                        self.concat(p[0], p[1])
                    } else {
                        p[0]
                    }
                })
                .collect();
        }
        parts[0]
    }

    /// `x` in every one of `lanes` lanes.
    pub fn splat(&self, x: BasicValueEnum<'ctx>, lanes: u32) -> VectorValue<'ctx> {
        let ty = vec_of(x.get_type(), lanes);
        let undef = ty.get_poison();
        let v = self
            .b
            .build_insert_element(undef, x, self.i32c(0), "")
            .expect("insert");
        let mask = self.i32t().vec_type(lanes).const_zero();
        self.b
            .build_shuffle_vector(v, undef, mask, "splat")
            .expect("shuffle")
    }

    /// `v` reinterpreted as `ty` (same bit width).
    pub fn vbitcast(&self, v: impl BasicValue<'ctx>, ty: VectorType<'ctx>) -> VectorValue<'ctx> {
        self.b
            .build_bit_cast(v, ty, "")
            .expect("bitcast")
            .into_vector_value()
    }

    /// A vector of `lanes` copies of the i32 constant `v`.
    pub fn i32s(&self, v: i32, lanes: u32) -> VectorValue<'ctx> {
        VectorType::const_vector(&vec![self.i32c(v); lanes as usize])
    }

    /// Calls a function of the module.
    pub fn call(
        &self,
        f: FunctionValue<'ctx>,
        args: &[BasicValueEnum<'ctx>],
    ) -> Option<BasicValueEnum<'ctx>> {
        let a: Vec<BasicMetadataValueEnum> = args.iter().map(|&x| x.into()).collect();
        self.b
            .build_call(f, &a, "")
            .expect("call")
            .try_as_basic_value()
            .basic()
    }
}

fn elem_align(ty: BasicTypeEnum<'_>) -> u32 {
    match ty {
        BasicTypeEnum::IntType(t) => (t.get_bit_width() / 8).max(1),
        BasicTypeEnum::FloatType(t) => {
            if t == t.get_context().f32_type() {
                4
            } else if t == t.get_context().f64_type() {
                8
            } else {
                2
            }
        }
        BasicTypeEnum::VectorType(v) => elem_align(v.get_element_type()),
        BasicTypeEnum::PointerType(_) => 8,
        _ => 1,
    }
}

/// The vector type of `lanes` elements of `elem`.
pub fn vec_of<'ctx>(elem: BasicTypeEnum<'ctx>, lanes: u32) -> VectorType<'ctx> {
    match elem {
        BasicTypeEnum::IntType(t) => t.vec_type(lanes),
        BasicTypeEnum::FloatType(t) => t.vec_type(lanes),
        BasicTypeEnum::PointerType(t) => t.vec_type(lanes),
        other => panic!("no vectors of {other:?}"),
    }
}

/// Marks a load of kernel arguments as invariant, so LLVM hoists it out of loops.
fn mark_invariant<'ctx>(cx: &'ctx Context, v: IntValue<'ctx>) {
    if let Some(inst) = v.as_instruction_value() {
        let kind = cx.get_kind_id("invariant.load");
        let md = cx.metadata_node(&[]);
        let _ = inst.set_metadata(md, kind);
    }
}
