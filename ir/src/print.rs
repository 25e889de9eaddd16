//! The text form's printer. `parse(print(g))` prints the same text again (a fixed point).

use crate::graph::Graph;
use crate::ops::Attr;
use crate::tensor::{each_data, Data, Tensor};
use std::fmt::Write;

/// Prints a name bare when it is an identifier, quoted otherwise.
pub fn quote_ident(name: &str) -> String {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '-'));
    if ok {
        name.to_string()
    } else {
        quote_str(name)
    }
}

/// A string literal with `\"`, `\\`, `\n`, `\t` and `\u{..}` escapes.
pub fn quote_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A float that parses back to the same f32.
pub fn fmt_f32(x: f32) -> String {
    format!("{x:?}")
}

fn fmt_tensor(t: &Tensor) -> String {
    let mut s = String::from("dense<");
    for d in &t.shape {
        let _ = write!(s, "{d}x");
    }
    let _ = write!(s, "{}>[", t.dtype());
    let items: Vec<String> = match &t.data {
        Data::F32(v) => v.iter().map(|&x| fmt_f32(x)).collect(),
        Data::F16(v) => v.iter().map(|x| fmt_f32(x.to_f32())).collect(),
        Data::BF16(v) => v.iter().map(|x| fmt_f32(x.to_f32())).collect(),
        other => each_data!(other, v => v.iter().map(|x| format!("{x}")).collect()),
    };
    s.push_str(&items.join(", "));
    s.push(']');
    s
}

pub fn fmt_attr(a: &Attr) -> String {
    match a {
        Attr::Int(i) => i.to_string(),
        Attr::Float(f) => fmt_f32(*f),
        Attr::Bool(b) => b.to_string(),
        Attr::Str(s) => quote_str(s),
        Attr::Ints(v) => format!(
            "[{}]",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Attr::Type(t) => t.to_string(),
        Attr::Tensor(t) => fmt_tensor(t),
    }
}

/// The graph as text.
pub fn print(g: &Graph) -> String {
    let names = g.value_names();
    let mut s = String::new();
    let ins: Vec<String> = g
        .inputs
        .iter()
        .map(|(_, v)| format!("{}: {}", names[v.0 as usize], g.ty(*v)))
        .collect();
    let _ = writeln!(s, "graph @{}({}) {{", quote_ident(&g.name), ins.join(", "));
    if g.kind != crate::graph::ModelKind::Graph {
        let _ = writeln!(s, "  kind {}", g.kind.name());
    }
    for (k, v) in &g.meta {
        let _ = writeln!(s, "  meta {} = {}", quote_str(k), quote_str(v));
    }
    for st in &g.states {
        let _ = writeln!(s, "  state ${} : {}", quote_ident(&st.name), st.ty);
    }
    for w in &g.weights {
        let _ = writeln!(
            s,
            "  weight @{} : {} #{:016x}",
            quote_ident(&w.name),
            w.ty,
            w.hash
        );
    }
    for n in &g.nodes {
        let outs: Vec<&str> = n
            .outputs
            .iter()
            .map(|o| names[o.0 as usize].as_str())
            .collect();
        let args: Vec<&str> = n
            .inputs
            .iter()
            .map(|o| names[o.0 as usize].as_str())
            .collect();
        let _ = write!(
            s,
            "  {} = {}({})",
            outs.join(", "),
            n.op.name(),
            args.join(", ")
        );
        let attrs = n.op.attrs();
        if !attrs.is_empty() {
            let a: Vec<String> = attrs
                .iter()
                .map(|(k, v)| format!("{k} = {}", fmt_attr(v)))
                .collect();
            let _ = write!(s, " {{{}}}", a.join(", "));
        }
        let tys: Vec<String> = n.outputs.iter().map(|o| g.ty(*o).to_string()).collect();
        let _ = writeln!(s, " : {}", tys.join(", "));
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|(name, v)| format!("{} as {}", names[v.0 as usize], quote_str(name)))
        .collect();
    if outs.is_empty() {
        s.push_str("  return\n");
    } else {
        let _ = writeln!(s, "  return {}", outs.join(", "));
    }
    s.push_str("}\n");
    s
}

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&print(self))
    }
}
