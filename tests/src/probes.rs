//! Probes: small functions written with the CPU backend's kernel builder (one ISA primitive or
//! one kernel each), compiled for a target into one object with a table of them, and called
//! through `tests/runner/probes.c`, which runs natively or under `qemu-aarch64 -cpu max`. The
//! ISA tests (`tests/tests/cpu_isa.rs`) compare every primitive and kernel with its generic
//! twin this way.

use crate::cpu::Target;
use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::values::{BasicValue, PointerValue, VectorValue};
use inkwell::AddressSpace;
use llmc_backends::cpu::kb::{vec_of, Kb};
use llmc_backends::llvm::{Codegen, CodegenOptions};
use llmc_backends::Arch;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Writes the body of a probe `void f(const i64 *args, i64 begin, i64 end)` at the
/// builder's position (the caller adds the return).
pub type Body = Box<dyn for<'a, 'ctx> Fn(&mut Kb<'a, 'ctx>)>;

/// One function of a probe object.
pub struct Probe {
    pub name: String,
    pub body: Body,
}

impl Probe {
    pub fn new(name: &str, body: impl for<'a, 'ctx> Fn(&mut Kb<'a, 'ctx>) + 'static) -> Probe {
        Probe {
            name: name.to_string(),
            body: Box::new(body),
        }
    }
}

/// A probe argument: an integer, or a byte offset into the call's input or output buffer.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Int(i64),
    In(u64),
    Out(u64),
}

/// A running probe server for one object.
pub struct Server {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
    pub target: Target,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Compiles `probes` for `target` (with the optimizations bundles get), links the server and
/// starts it. Panics when a step fails: the tests that call this need every step.
pub fn serve(target: &Target, probes: Vec<Probe>) -> Server {
    let spec = target.spec();
    let arm = spec.arch() == Arch::Aarch64;
    let cx = Context::create();
    let m = cx.create_module("probes");
    let mut fns = vec![];
    for p in &probes {
        let mut kb = Kb::kernel(&cx, &m, &p.name);
        (p.body)(&mut kb);
        fns.push(kb.finish());
    }
    let ptr = cx.ptr_type(AddressSpace::default());
    let table = ptr.const_array(
        &fns.iter()
            .map(|f| f.as_global_value().as_pointer_value())
            .collect::<Vec<_>>(),
    );
    let g = m.add_global(table.get_type(), None, "llmc_probes");
    g.set_initializer(&table);
    g.set_constant(true);
    let count = cx.i32_type().const_int(fns.len() as u64, false);
    let c = m.add_global(cx.i32_type(), None, "llmc_probe_count");
    c.set_initializer(&count.as_basic_value_enum());
    c.set_constant(true);
    let cg = Codegen::new(&spec, CodegenOptions::default())
        .unwrap_or_else(|e| panic!("no code generator for {}: {e}", target.label()));
    cg.configure_module(&m);
    m.verify()
        .unwrap_or_else(|e| panic!("probe module does not verify: {e}"));
    m.run_passes(
        "default<O3>",
        cg.target_machine(),
        PassBuilderOptions::create(),
    )
    .unwrap_or_else(|e| panic!("optimizing the probes: {e}"));
    let object = cg
        .emit_object(&m)
        .unwrap_or_else(|e| panic!("emitting the probes: {e}"));
    let dir = std::env::temp_dir().join(format!(
        "llmc-probes-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    let obj = dir.join("probes.o");
    std::fs::write(&obj, object).expect("write the probe object");
    let exe = dir.join("probes");
    let (cc, extra): (&str, &[&str]) = if arm {
        ("aarch64-linux-gnu-gcc", &["-static"])
    } else {
        ("cc", &[])
    };
    let res = Command::new(cc)
        .args(["-O1", "-std=c11"])
        .args(extra)
        .arg(crate::repo_root().join("tests/runner/probes.c"))
        .arg(&obj)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        res.status.success(),
        "{cc} could not link the probe server:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut cmd = if arm {
        let mut c = Command::new("qemu-aarch64");
        c.args(["-cpu", "max"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the probe server");
    let stdin = BufWriter::new(child.stdin.take().expect("piped stdin"));
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    Server {
        child,
        stdin: Some(stdin),
        stdout,
        dir,
        target: target.clone(),
    }
}

impl Server {
    /// Calls probe `f` with `args` on work items `range`, the input buffer holding `input`
    /// and an output buffer of `out_bytes` zeros; returns the output buffer.
    pub fn call(
        &mut self,
        f: u32,
        args: &[Arg],
        input: &[u8],
        out_bytes: usize,
        range: (i64, i64),
    ) -> Vec<u8> {
        let mut req = vec![];
        req.extend(f.to_le_bytes());
        req.extend((args.len() as u32).to_le_bytes());
        for a in args {
            let (kind, v) = match *a {
                Arg::Int(v) => (0u32, v),
                Arg::In(o) => (1, o as i64),
                Arg::Out(o) => (2, o as i64),
            };
            req.extend(kind.to_le_bytes());
            req.extend(v.to_le_bytes());
        }
        req.extend((input.len() as u64).to_le_bytes());
        req.extend(input);
        req.extend((out_bytes as u64).to_le_bytes());
        req.extend(range.0.to_le_bytes());
        req.extend(range.1.to_le_bytes());
        let w = self.stdin.as_mut().expect("the server is running");
        w.write_all(&req)
            .and_then(|_| w.flush())
            .unwrap_or_else(|e| panic!("probe server for {} is gone: {e}", self.target.label()));
        let mut len = [0u8; 8];
        self.stdout.read_exact(&mut len).unwrap_or_else(|e| {
            panic!(
                "probe server for {} died on function {f}: {e}",
                self.target.label()
            )
        });
        let n = u64::from_le_bytes(len) as usize;
        assert_eq!(n, out_bytes, "reply length");
        let mut out = vec![0u8; n];
        self.stdout
            .read_exact(&mut out)
            .expect("read the probe's output");
        out
    }

    /// Calls a primitive probe: `args = [input, output]`, one work item.
    pub fn io(&mut self, f: u32, input: &[u8], out_bytes: usize) -> Vec<u8> {
        self.call(f, &[Arg::In(0), Arg::Out(0)], input, out_bytes, (0, 1))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // closing the pipe ends the server's loop
        drop(self.stdin.take());
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The input and output buffers of a primitive probe (`args[0]`, `args[1]`).
pub fn io<'ctx>(kb: &Kb<'_, 'ctx>) -> (PointerValue<'ctx>, PointerValue<'ctx>) {
    (kb.arg_ptr(0), kb.arg_ptr(1))
}

/// `lanes` elements of `elem` bits (8, 16 or 32; `float` for f32) at byte `at` of `p`.
pub fn load<'ctx>(
    kb: &Kb<'_, 'ctx>,
    p: PointerValue<'ctx>,
    at: u64,
    elem: Elem,
    lanes: u32,
) -> VectorValue<'ctx> {
    let ty = elem.ty(kb);
    let base = kb.gep(kb.i8t().into(), p, kb.i64c(at as i64));
    kb.vload(ty, lanes, base, kb.i64c(0))
}

/// Stores `v` at byte `at` of `p`.
pub fn store<'ctx>(kb: &Kb<'_, 'ctx>, p: PointerValue<'ctx>, at: u64, v: VectorValue<'ctx>) {
    let base = kb.gep(kb.i8t().into(), p, kb.i64c(at as i64));
    kb.vstore(base, kb.i64c(0), v)
}

/// Element types of probe vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    I8,
    I16,
    I32,
    F32,
}

impl Elem {
    fn ty<'ctx>(self, kb: &Kb<'_, 'ctx>) -> inkwell::types::BasicTypeEnum<'ctx> {
        match self {
            Elem::I8 => kb.i8t().into(),
            Elem::I16 => kb.cx.i16_type().into(),
            Elem::I32 => kb.i32t().into(),
            Elem::F32 => kb.f32t().into(),
        }
    }

    /// The vector type of `lanes` of these.
    pub fn vec<'ctx>(self, kb: &Kb<'_, 'ctx>, lanes: u32) -> inkwell::types::VectorType<'ctx> {
        vec_of(self.ty(kb), lanes)
    }
}
