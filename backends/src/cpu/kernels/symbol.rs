//! Kernel symbols: `llmc_<isa>_<op>[_<parameters>]_<dtype>[_<tile>]`, C identifiers that tell
//! in `nm` which primitives (`generic` where the kernel uses none), op, encodings and tile each
//! kernel was emitted with, e.g. `llmc_avx512vnni_linear_q4g128f16asym_dot4_i8_8x16`.

use super::linear::{ActQuant, Kept, LinearKernel, RowFormat, WeightLayout};
use super::Kernel;
use crate::cpu::isa::VectorIsa;
use crate::cpu::pack::{QLayout, NR};
use llmc_ir::{PaletteSpec, QuantSpec};

/// The symbol of kernel `k` emitted with primitives `vx`. Different kernels get different
/// symbols, and the same kernel always the same one.
pub fn symbol(k: &Kernel, vx: &dyn VectorIsa) -> String {
    let generic = "generic";
    let (isa, body) = match k {
        Kernel::Copy { bytes } => (generic, format!("copy_b{bytes}")),
        Kernel::Fill { bytes } => (generic, format!("fill_b{bytes}")),
        Kernel::Range { dtype } => (generic, format!("range_{dtype}")),
        Kernel::Unary { op, dtype } => (generic, format!("{}_{dtype}", op.name())),
        Kernel::Clip { dtype } => (generic, format!("clip_{dtype}")),
        Kernel::Cast { from, to } => (generic, format!("cast_{from}_{to}")),
        Kernel::Binary { op, dtype } => (generic, format!("{}_{dtype}", op.name())),
        Kernel::Where { dtype } => (generic, format!("where_{dtype}")),
        Kernel::Norm { rms, bias, dtype } => (
            generic,
            format!(
                "{}norm{}_{dtype}",
                if *rms { "rms" } else { "layer" },
                if *bias { "_bias" } else { "" }
            ),
        ),
        Kernel::Softmax { log, dtype } => (
            generic,
            format!("{}softmax_{dtype}", if *log { "log" } else { "" }),
        ),
        Kernel::Reduce { kind, dtype } => (generic, format!("{}_{dtype}", kind.name())),
        Kernel::ArgMax { dtype } => (generic, format!("argmax_{dtype}")),
        Kernel::Gather { table, idx, out } => {
            (generic, format!("gather_{}_{idx}_{out}", rows(table)))
        }
        Kernel::Linear(l) => linear(l, vx),
        Kernel::QuantizeRows { group, fake } => (
            vx.name(),
            format!(
                "{}quantize_rows_{}_f32",
                if *fake { "fake_" } else { "" },
                if *group == 0 {
                    "row".to_string()
                } else {
                    format!("g{group}")
                }
            ),
        ),
        Kernel::MatMul => (generic, "matmul_f32".to_string()),
        Kernel::Rope {
            mode,
            base_bits,
            dims,
        } => {
            let base = f32::from_bits(*base_bits);
            let base = if base.fract() == 0.0 && base > 0.0 && base < 1e9 {
                format!("{base}")
            } else {
                format!("x{base_bits:08x}")
            };
            let mode = match mode {
                llmc_ir::RopeMode::Interleaved => "interleaved",
                llmc_ir::RopeMode::Half => "half",
            };
            (generic, format!("rope_{mode}_d{dims}_base{base}_f32"))
        }
        Kernel::Attention { causal, mask } => (
            generic,
            format!(
                "attention{}{}_f32",
                if *causal { "_causal" } else { "" },
                if *mask { "_mask" } else { "" }
            ),
        ),
    };
    format!("llmc_{isa}_{body}")
}

/// `linear_<weights>_<activations>_<tile>[_bias]`; the primitives' tag for panel kernels.
fn linear(l: &LinearKernel, vx: &dyn VectorIsa) -> (&'static str, String) {
    let weights = match &l.w {
        WeightLayout::Rows(f) => format!("rows_{}", rows(f)),
        WeightLayout::DensePanels(dt) => format!("{dt}"),
        WeightLayout::QuantPanels { q, layout, offset } => quant_panels(q, *layout, *offset),
        WeightLayout::PalettePanels(p) => palette(p),
        WeightLayout::Sparse24Panels { kept, k16 } => format!(
            "sp24{}{}",
            match kept {
                Kept::Dense(dt) => format!("{dt}"),
                Kept::Quant(q) => quant(q),
            },
            if *k16 { "_k16" } else { "" }
        ),
    };
    let act = match l.act {
        ActQuant::F32 => "f32",
        ActQuant::I8 => "i8",
    };
    let (isa, tile) = match l.tile_rows(vx) {
        Some(mr) => (vx.name(), format!("{mr}x{NR}")),
        None => ("generic", "1x1".to_string()),
    };
    let bias = if l.bias { "_bias" } else { "" };
    (isa, format!("linear_{weights}_{act}_{tile}{bias}"))
}

/// A table's row format: its encoding as in the IR text, then the panel layout if any.
fn rows(f: &RowFormat) -> String {
    match f {
        RowFormat::Dense(dt) => format!("{dt}"),
        RowFormat::Quant(q) => quant(q),
        RowFormat::Panels(dt) => format!("{dt}panels"),
        RowFormat::PalettePanels => "pal4panels".to_string(),
        RowFormat::QuantPanels { q, layout, offset } => quant_panels(q, *layout, *offset),
    }
}

/// `q4g128f16asym`: bits, group, scale type and zero as the IR text prints them.
fn quant(q: &QuantSpec) -> String {
    format!("q{}{}{}{}", q.bits, q.group, q.scale, q.zero)
}

/// Quantized panels: the encoding, the layout, and `s` when 8-bit codes are stored signed.
fn quant_panels(q: &QuantSpec, layout: QLayout, offset: u8) -> String {
    let layout = match layout {
        QLayout::Dot4 => "dot4",
        QLayout::Mmla => "mmla",
    };
    let signed = if offset != 0 { "s" } else { "" };
    format!("{}_{layout}{signed}", quant(q))
}

/// `pal4r16f32`: index bits, group and entry type.
fn palette(p: &PaletteSpec) -> String {
    format!("pal{}{}{}", p.bits, p.group, p.entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::isa::{ArmFeatures, Isa, X86Level};
    use llmc_ir::{DType, Group, Zero};

    fn is_c_ident(s: &str) -> bool {
        s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    }

    #[test]
    fn readable_symbols() {
        let q = QuantSpec {
            bits: 4,
            group: Group::Size(128),
            scale: DType::F16,
            zero: Zero::Int,
        };
        let dot4 = Kernel::Linear(LinearKernel {
            w: WeightLayout::QuantPanels {
                q,
                layout: QLayout::Dot4,
                offset: 0,
            },
            act: ActQuant::I8,
            bias: false,
        });
        let mut isa = Isa::x86_64(X86Level::Avx512);
        if let Isa::X86_64(f) = &mut isa {
            f.vnni = true;
        }
        let s = symbol(&dot4, isa.primitives().as_ref());
        assert_eq!(s, "llmc_avx512vnni_linear_q4g128f16asym_dot4_i8_8x16");
        let arm = Isa::Aarch64(ArmFeatures {
            dotprod: true,
            i8mm: true,
        });
        let s = symbol(&dot4, arm.primitives().as_ref());
        assert_eq!(s, "llmc_i8mm_linear_q4g128f16asym_dot4_i8_2x16");
        let rows = Kernel::Linear(LinearKernel {
            w: WeightLayout::Rows(RowFormat::Quant(q)),
            act: ActQuant::F32,
            bias: true,
        });
        let s = symbol(&rows, arm.primitives().as_ref());
        assert_eq!(s, "llmc_generic_linear_rows_q4g128f16asym_f32_1x1_bias");
        let rope = Kernel::Rope {
            mode: llmc_ir::RopeMode::Half,
            base_bits: 10000f32.to_bits(),
            dims: 64,
        };
        let s = symbol(&rope, arm.primitives().as_ref());
        assert_eq!(s, "llmc_generic_rope_half_d64_base10000_f32");
        for k in [dot4, rows, rope] {
            assert!(is_c_ident(&symbol(&k, Isa::Generic.primitives().as_ref())));
        }
    }
}
