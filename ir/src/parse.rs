//! The text form's parser. Errors give the line and column and say what was expected.

use crate::error::IrError;
use crate::graph::{Graph, ValueId};
use crate::ops::{Attr, Op};
use crate::tensor::{Data, Tensor};
use crate::types::{DType, Dim, Encoding, Group, PaletteSpec, QuantSpec, Shape, TensorType, Zero};
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};

/// Parses a graph from text. `file` names the source in errors.
pub fn parse(file: &str, src: &str) -> Result<Graph, IrError> {
    let mut p = Parser { src, pos: 0, file };
    let g = p.graph()?;
    p.ws();
    if p.pos < src.len() {
        return Err(p.err("expected the end of the input after the graph's closing '}'"));
    }
    Ok(g)
}

/// Parses a tensor type such as `tensor<{batch}x576x!q4<g128,f16,asym>>`.
pub fn parse_type(src: &str) -> Result<TensorType, IrError> {
    let mut p = Parser {
        src,
        pos: 0,
        file: "<type>",
    };
    let t = p.tensor_type()?;
    p.ws();
    if p.pos < src.len() {
        return Err(p.err("unexpected text after the type"));
    }
    Ok(t)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    file: &'a str,
}

impl<'a> Parser<'a> {
    fn line_col(&self, at: usize) -> (usize, usize) {
        let before = &self.src[..at.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
            + 1;
        (line, col)
    }

    fn err_at(&self, at: usize, msg: impl Into<String>) -> IrError {
        let (line, col) = self.line_col(at);
        IrError::Parse {
            file: self.file.to_string(),
            line,
            col,
            msg: msg.into(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> IrError {
        self.err_at(self.pos, msg)
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Skips whitespace and `//` comments.
    fn ws(&mut self) {
        loop {
            let r = self.rest();
            let t = r.trim_start();
            self.pos += r.len() - t.len();
            if t.starts_with("//") {
                self.pos += t.find('\n').unwrap_or(t.len());
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        self.ws();
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> Result<(), IrError> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{s}', found {}", self.found())))
        }
    }

    fn found(&self) -> String {
        let r = self.rest();
        if r.is_empty() {
            return "the end of the input".into();
        }
        let tok: String = r
            .chars()
            .take_while(|c| !c.is_whitespace())
            .take(20)
            .collect();
        format!("'{tok}'")
    }

    /// An identifier: letters, digits, `_`, `.`, `$`, `-`, not starting with a digit.
    fn ident(&mut self) -> Option<&'a str> {
        self.ws();
        let r = self.rest();
        let mut end = 0;
        for (i, c) in r.char_indices() {
            let ok = if i == 0 {
                c.is_ascii_alphabetic() || c == '_'
            } else {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '-')
            };
            if !ok {
                break;
            }
            end = i + c.len_utf8();
        }
        if end == 0 {
            return None;
        }
        self.pos += end;
        Some(&r[..end])
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let save = self.pos;
        match self.ident() {
            Some(w) if w == kw => true,
            _ => {
                self.pos = save;
                false
            }
        }
    }

    fn string(&mut self) -> Result<String, IrError> {
        self.ws();
        let start = self.pos;
        if !self.eat("\"") {
            return Err(self.err(format!("expected a string, found {}", self.found())));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((j, 'u')) => {
                        let tail = &self.rest()[j + 1..];
                        let close = tail.find('}').filter(|_| tail.starts_with('{'));
                        let ch = close
                            .and_then(|e| u32::from_str_radix(&tail[1..e], 16).ok())
                            .and_then(char::from_u32);
                        match (ch, close) {
                            (Some(ch), Some(e)) => {
                                out.push(ch);
                                for _ in 0..e + 1 {
                                    chars.next();
                                }
                            }
                            _ => return Err(self.err_at(self.pos + j, "bad \\u{..} escape")),
                        }
                    }
                    _ => return Err(self.err_at(self.pos + i, "unknown escape in string")),
                },
                c => out.push(c),
            }
        }
        Err(self.err_at(start, "unterminated string"))
    }

    /// A name after a sigil: identifier or string.
    fn name(&mut self) -> Result<String, IrError> {
        if self.peek() == Some('"') {
            return self.string();
        }
        match self.ident() {
            Some(s) => Ok(s.to_string()),
            None => Err(self.err(format!("expected a name, found {}", self.found()))),
        }
    }

    fn uint(&mut self) -> Result<u64, IrError> {
        self.ws();
        let r = self.rest();
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if end == 0 {
            return Err(self.err(format!("expected a number, found {}", self.found())));
        }
        let v = r[..end].parse().map_err(|_| self.err("number too large"))?;
        self.pos += end;
        Ok(v)
    }

    /// A numeric literal: returns its text and whether it is a float.
    fn number_text(&mut self) -> Result<(&'a str, bool), IrError> {
        self.ws();
        let r = self.rest();
        for special in ["-inf", "inf", "NaN"] {
            if r.starts_with(special) {
                self.pos += special.len();
                return Ok((special, true));
            }
        }
        let mut end = 0;
        let mut float = false;
        let b = r.as_bytes();
        if end < b.len() && (b[end] == b'-' || b[end] == b'+') {
            end += 1;
        }
        while end < b.len() {
            match b[end] {
                b'0'..=b'9' => {}
                b'.' => float = true,
                b'e' | b'E' => {
                    float = true;
                    if end + 1 < b.len() && (b[end + 1] == b'-' || b[end + 1] == b'+') {
                        end += 1;
                    }
                }
                _ => break,
            }
            end += 1;
        }
        if end == 0 || !r[..end].bytes().any(|c| c.is_ascii_digit()) {
            return Err(self.err(format!("expected a number, found {}", self.found())));
        }
        self.pos += end;
        Ok((&r[..end], float))
    }

    fn f64_lit(&mut self) -> Result<f64, IrError> {
        let at = self.pos;
        let (t, _) = self.number_text()?;
        t.parse::<f64>()
            .map_err(|_| self.err_at(at, format!("bad number '{t}'")))
    }

    fn i64_lit(&mut self) -> Result<i64, IrError> {
        let at = self.pos;
        let (t, float) = self.number_text()?;
        if float {
            return Err(self.err_at(at, format!("expected an integer, found '{t}'")));
        }
        t.parse::<i64>()
            .map_err(|_| self.err_at(at, format!("bad integer '{t}'")))
    }

    fn dtype(&mut self) -> Result<DType, IrError> {
        let at = self.pos;
        let w = self
            .ident()
            .ok_or_else(|| self.err(format!("expected an element type, found {}", self.found())))?;
        DType::from_name(w).ok_or_else(|| {
            self.err_at(
                at,
                format!("unknown element type '{w}' (f32, f16, bf16, i64, i32, i8, u8, bool)"),
            )
        })
    }

    fn group(&mut self) -> Result<Group, IrError> {
        let at = self.pos;
        let w = self
            .ident()
            .ok_or_else(|| self.err("expected a group: pt, pc, g<N> or r<N>"))?;
        let sized = |prefix: char| {
            w.strip_prefix(prefix)
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| n > 0)
        };
        match w {
            "pt" => Ok(Group::Tensor),
            "pc" => Ok(Group::Channel),
            _ => sized('g')
                .map(Group::Size)
                .or_else(|| sized('r').map(Group::Rows))
                .ok_or_else(|| {
                    self.err_at(
                        at,
                        format!("expected a group: pt, pc, g<N> or r<N>, found '{w}'"),
                    )
                }),
        }
    }

    fn encoding(&mut self) -> Result<Encoding, IrError> {
        self.ws();
        if !self.eat("!") {
            return Ok(Encoding::Dense(self.dtype()?));
        }
        let at = self.pos;
        let w = self
            .ident()
            .ok_or_else(|| self.err("expected an encoding after '!'"))?;
        let bits = |p: &str| -> Option<u8> { w.strip_prefix(p).and_then(|b| b.parse().ok()) };
        if w == "sp24" {
            self.expect("<")?;
            let inner = self.encoding()?;
            self.expect(">")?;
            return Ok(Encoding::Sparse24(Box::new(inner)));
        }
        if let Some(b) = bits("pal") {
            self.expect("<")?;
            let group = self.group()?;
            self.expect(",")?;
            let entry = self.dtype()?;
            self.expect(">")?;
            return Ok(Encoding::Palette(PaletteSpec {
                bits: b,
                group,
                entry,
            }));
        }
        if let Some(b) = bits("q") {
            self.expect("<")?;
            let group = self.group()?;
            self.expect(",")?;
            let scale = self.dtype()?;
            self.expect(",")?;
            let zat = self.pos;
            let zero = match self.ident() {
                Some("sym") => Zero::Symmetric,
                Some("asym") => Zero::Int,
                Some("min") => Zero::Float,
                _ => return Err(self.err_at(zat, "expected sym, asym or min")),
            };
            self.expect(">")?;
            return Ok(Encoding::Quant(QuantSpec {
                bits: b,
                group,
                scale,
                zero,
            }));
        }
        Err(self.err_at(
            at,
            format!("unknown encoding '!{w}' (!qN<..>, !palN<..>, !sp24<..>)"),
        ))
    }

    /// `tensor<` dims `x` ... element `>`.
    fn tensor_type(&mut self) -> Result<TensorType, IrError> {
        if !self.keyword("tensor") {
            return Err(self.err(format!(
                "expected a type 'tensor<..>', found {}",
                self.found()
            )));
        }
        self.expect("<")?;
        let (shape, enc) = self.dims_then(|p| p.encoding())?;
        self.expect(">")?;
        Ok(TensorType { shape, enc })
    }

    /// Dimensions separated by `x`, then whatever `last` parses.
    fn dims_then<T>(
        &mut self,
        last: impl Fn(&mut Self) -> Result<T, IrError>,
    ) -> Result<(Shape, T), IrError> {
        let mut dims = vec![];
        loop {
            self.ws();
            let d = match self.peek() {
                Some('{') => {
                    self.pos += 1;
                    let n = self
                        .ident()
                        .ok_or_else(|| self.err("expected a dimension name"))?
                        .to_string();
                    if !self.rest().starts_with('}') {
                        return Err(self.err("expected '}' after the dimension name"));
                    }
                    self.pos += 1;
                    Dim::Sym(n)
                }
                Some('?') => {
                    self.pos += 1;
                    Dim::Any
                }
                Some(c) if c.is_ascii_digit() => Dim::Fixed(self.uint()?),
                _ => return Ok((Shape(dims), last(self)?)),
            };
            dims.push(d);
            if !self.rest().starts_with('x') {
                return Err(self.err(format!(
                    "expected 'x' after a dimension, found {}",
                    self.found()
                )));
            }
            self.pos += 1;
        }
    }

    fn tensor_lit(&mut self) -> Result<Tensor, IrError> {
        // after `dense`
        self.expect("<")?;
        let (shape, dtype) = self.dims_then(|p| p.dtype())?;
        self.expect(">")?;
        let dims = shape
            .as_fixed()
            .ok_or_else(|| self.err("a dense literal needs fixed dimensions"))?;
        self.expect("[")?;
        let mut items: Vec<f64> = vec![];
        let mut ints: Vec<i64> = vec![];
        let mut bools: Vec<bool> = vec![];
        if !self.eat("]") {
            loop {
                match dtype {
                    DType::Bool => {
                        if self.keyword("true") {
                            bools.push(true)
                        } else if self.keyword("false") {
                            bools.push(false)
                        } else {
                            return Err(self.err("expected true or false"));
                        }
                    }
                    d if d.is_float() => items.push(self.f64_lit()?),
                    _ => ints.push(self.i64_lit()?),
                }
                if self.eat("]") {
                    break;
                }
                self.expect(",")?;
            }
        }
        let data = match dtype {
            DType::F32 => Data::F32(items.iter().map(|&x| x as f32).collect()),
            DType::F16 => Data::F16(items.iter().map(|&x| f16::from_f32(x as f32)).collect()),
            DType::BF16 => Data::BF16(items.iter().map(|&x| bf16::from_f32(x as f32)).collect()),
            DType::Bool => Data::Bool(bools),
            d => Data::I64(ints).cast(d),
        };
        let n: usize = dims.iter().product();
        if data.len() != n {
            return Err(self.err(format!(
                "dense literal of shape {dims:?} needs {n} elements, has {}",
                data.len()
            )));
        }
        Ok(Tensor::new(dims, data))
    }

    fn attr_value(&mut self) -> Result<Attr, IrError> {
        self.ws();
        match self.peek() {
            Some('"') => return Ok(Attr::Str(self.string()?)),
            Some('[') => {
                self.pos += 1;
                let mut v = vec![];
                if !self.eat("]") {
                    loop {
                        v.push(self.i64_lit()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                return Ok(Attr::Ints(v));
            }
            _ => {}
        }
        if self.keyword("true") {
            return Ok(Attr::Bool(true));
        }
        if self.keyword("false") {
            return Ok(Attr::Bool(false));
        }
        if self.keyword("dense") {
            return Ok(Attr::Tensor(self.tensor_lit()?));
        }
        let save = self.pos;
        if let Some(w) = self.ident() {
            if let Some(d) = DType::from_name(w) {
                return Ok(Attr::Type(d));
            }
            if w != "inf" && w != "NaN" {
                return Err(self.err_at(save, format!("unexpected '{w}' as an attribute value")));
            }
            self.pos = save;
        }
        let at = self.pos;
        let (t, float) = self.number_text()?;
        if float {
            t.parse::<f32>()
                .map(Attr::Float)
                .map_err(|_| self.err_at(at, format!("bad float '{t}'")))
        } else {
            t.parse::<i64>()
                .map(Attr::Int)
                .map_err(|_| self.err_at(at, format!("bad integer '{t}'")))
        }
    }

    fn hash(&mut self) -> Result<u64, IrError> {
        self.expect("#")?;
        let r = self.rest();
        let end = r.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(r.len());
        let v = u64::from_str_radix(&r[..end], 16)
            .map_err(|_| self.err("expected a hexadecimal content hash after '#'"))?;
        self.pos += end;
        Ok(v)
    }

    fn graph(&mut self) -> Result<Graph, IrError> {
        self.ws();
        if !self.keyword("graph") {
            return Err(self.err(format!("expected 'graph', found {}", self.found())));
        }
        self.expect("@")?;
        let name = self.name()?;
        let mut g = Graph::new(&name);
        let mut scope: HashMap<String, ValueId> = HashMap::new();
        self.expect("(")?;
        if !self.eat(")") {
            loop {
                self.expect("%")?;
                let at = self.pos;
                let n = self.name()?;
                if n.chars().all(|c| c.is_ascii_digit()) && !self.src[at..].starts_with('"') {
                    return Err(self.err_at(at, "inputs need names, not numbers"));
                }
                self.expect(":")?;
                let ty = self.tensor_type()?;
                if scope.contains_key(&format!("%{n}")) {
                    return Err(self.err_at(at, format!("input %{n} is declared twice")));
                }
                let v = g.add_input(&n, ty);
                scope.insert(format!("%{}", crate::print::quote_ident(&n)), v);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        self.expect("{")?;
        let mut next_result = 0usize;
        loop {
            self.ws();
            let at = self.pos;
            if self.keyword("kind") {
                self.ws();
                let word_at = self.pos;
                let word = self.name()?;
                g.kind = match word.as_str() {
                    "decoder" => crate::graph::ModelKind::Decoder,
                    "graph" => crate::graph::ModelKind::Graph,
                    other => {
                        return Err(self.err_at(
                            word_at,
                            format!("kind '{other}' is not a model kind (decoder or graph)"),
                        ))
                    }
                };
            } else if self.keyword("meta") {
                let k = self.string()?;
                self.expect("=")?;
                let v = self.string()?;
                g.meta.insert(k, v);
            } else if self.keyword("state") {
                self.expect("$")?;
                let n = self.name()?;
                self.expect(":")?;
                let ty = self.tensor_type()?;
                g.add_state(&n, ty);
            } else if self.keyword("weight") {
                self.expect("@")?;
                let n = self.name()?;
                self.expect(":")?;
                let ty = self.tensor_type()?;
                let h = self.hash()?;
                let fixed: Option<Vec<u64>> = ty.shape.0.iter().map(|d| d.fixed()).collect();
                let fixed = fixed.ok_or_else(|| {
                    self.err_at(at, format!("weight @{n} needs a fixed shape, got {ty}"))
                })?;
                ty.enc
                    .check_shape(&fixed)
                    .map_err(|e| self.err_at(at, format!("weight @{n}: {e}")))?;
                let v = g
                    .add_weight_hash(&n, ty, h)
                    .map_err(|e| self.err_at(at, e.to_string()))?;
                scope.insert(format!("@{}", crate::print::quote_ident(&n)), v);
            } else if self.keyword("return") {
                self.ws();
                if self.peek() != Some('}') {
                    loop {
                        let v = self.operand(&scope)?;
                        if !self.keyword("as") {
                            return Err(self.err("expected 'as \"name\"' after a returned value"));
                        }
                        let n = self.string()?;
                        g.set_output(&n, v);
                        if !self.eat(",") {
                            break;
                        }
                    }
                }
                self.expect("}")?;
                return Ok(g);
            } else if self.peek() == Some('%') {
                self.node(&mut g, &mut scope, &mut next_result)?;
            } else {
                return Err(self.err(format!(
                    "expected meta, state, weight, a node or return, found {}",
                    self.found()
                )));
            }
        }
    }

    fn operand(&mut self, scope: &HashMap<String, ValueId>) -> Result<ValueId, IrError> {
        self.ws();
        let at = self.pos;
        let sigil = match self.peek() {
            Some(c @ ('%' | '@')) => c,
            _ => {
                return Err(self.err(format!(
                    "expected a value (%name, %N or @weight), found {}",
                    self.found()
                )))
            }
        };
        self.pos += 1;
        let key = if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            format!("{sigil}{}", self.uint()?)
        } else {
            format!("{sigil}{}", crate::print::quote_ident(&self.name()?))
        };
        scope
            .get(&key)
            .copied()
            .ok_or_else(|| self.err_at(at, format!("use of undefined value {key}")))
    }

    fn node(
        &mut self,
        g: &mut Graph,
        scope: &mut HashMap<String, ValueId>,
        next: &mut usize,
    ) -> Result<(), IrError> {
        let line_at = self.pos;
        let (line, _) = self.line_col(line_at);
        let mut outs = vec![];
        loop {
            self.expect("%")?;
            let at = self.pos;
            let n = self
                .uint()
                .map_err(|_| self.err_at(at, "results are numbered %0, %1, ... in order"))?;
            if n as usize != *next {
                return Err(self.err_at(
                    at,
                    format!("expected result %{next} (results are numbered in order), found %{n}"),
                ));
            }
            *next += 1;
            outs.push(format!("%{n}"));
            if !self.eat(",") {
                break;
            }
        }
        self.expect("=")?;
        self.ws();
        let op_at = self.pos;
        let opname = self
            .ident()
            .ok_or_else(|| self.err(format!("expected an op name, found {}", self.found())))?;
        self.expect("(")?;
        let mut args = vec![];
        if !self.eat(")") {
            loop {
                args.push(self.operand(scope)?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        let mut attrs = BTreeMap::new();
        if self.eat("{") {
            if !self.eat("}") {
                loop {
                    let kat = self.pos;
                    let k = self
                        .ident()
                        .ok_or_else(|| self.err("expected an attribute name"))?
                        .to_string();
                    self.expect("=")?;
                    let v = self.attr_value()?;
                    if attrs.insert(k.clone(), v).is_some() {
                        return Err(self.err_at(kat, format!("attribute '{k}' given twice")));
                    }
                    if self.eat("}") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
        }
        let op = Op::from_parts(opname, &attrs).map_err(|e| self.err_at(op_at, e.to_string()))?;
        self.expect(":")?;
        let mut types = vec![self.tensor_type()?];
        while self.eat(",") {
            types.push(self.tensor_type()?);
        }
        if types.len() != outs.len() {
            return Err(self.err_at(
                line_at,
                format!("{} results but {} types", outs.len(), types.len()),
            ));
        }
        if op.num_results() != outs.len() {
            return Err(self.err_at(
                line_at,
                format!(
                    "{opname} gives {} results, not {}",
                    op.num_results(),
                    outs.len()
                ),
            ));
        }
        let vals = g.push_node(op, &args, types, Some(format!("line {line}")));
        for (n, v) in outs.into_iter().zip(vals) {
            scope.insert(n, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse() {
        for s in [
            "tensor<{batch}x?x576xf32>",
            "tensor<576x1536x!q4<g128,f16,asym>>",
            "tensor<i64>",
            "tensor<8x16x!pal4<pt,f16>>",
            "tensor<256x16x!pal4<r128,f16>>",
            "tensor<8x16x!sp24<!q4<g8,bf16,sym>>>",
            "tensor<3x!q8<pc,f32,min>>",
        ] {
            assert_eq!(parse_type(s).unwrap().to_string(), s);
        }
        let e = parse_type("tensor<4xq4>").unwrap_err().to_string();
        assert!(e.contains("unknown element type 'q4'"), "{e}");
        let e = parse_type("tensor<4x!q4<g32,f16,weird>>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sym, asym or min"), "{e}");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let src = "graph @g(%x: tensor<4xf32>) {\n  %0 = exp(%y) : tensor<4xf32>\n  return %0 as \"out\"\n}\n";
        let e = parse("t.llmc", src).unwrap_err().to_string();
        assert_eq!(e, "t.llmc:2:12: use of undefined value %y");
        let src = "graph @g(%x: tensor<4xf32>) {\n  %0 = exp(%x) {axis = 1} : tensor<4xf32>\n  return\n}\n";
        let e = parse("t.llmc", src).unwrap_err().to_string();
        assert!(
            e.starts_with("t.llmc:2:8: op 'exp' has no attribute 'axis'"),
            "{e}"
        );
    }
}
