//! Sizes known at build time up to run-time symbols: polynomials with integer coefficients
//! in the bundle's dimension symbols (tokens in this call, tokens already cached, ...).

use std::collections::BTreeMap;
use std::fmt;

/// A run-time symbol, by index into the bundle's symbol list.
pub type Sym = u8;

/// `Σ coeff · Π symbols`: each key is a sorted list of symbols (a monomial; empty = constant).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Size(BTreeMap<Vec<Sym>, i64>);

impl Size {
    pub fn c(v: i64) -> Size {
        let mut m = BTreeMap::new();
        if v != 0 {
            m.insert(vec![], v);
        }
        Size(m)
    }

    pub fn sym(s: Sym) -> Size {
        let mut m = BTreeMap::new();
        m.insert(vec![s], 1);
        Size(m)
    }

    /// The value when it does not depend on any symbol.
    pub fn as_const(&self) -> Option<i64> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&vec![]).copied(),
            _ => None,
        }
    }

    pub fn terms(&self) -> impl Iterator<Item = (&Vec<Sym>, &i64)> {
        self.0.iter()
    }

    pub fn add(&self, o: &Size) -> Size {
        let mut m = self.0.clone();
        for (k, v) in &o.0 {
            let e = m.entry(k.clone()).or_insert(0);
            *e += v;
            if *e == 0 {
                m.remove(k);
            }
        }
        Size(m)
    }

    pub fn neg(&self) -> Size {
        Size(self.0.iter().map(|(k, v)| (k.clone(), -v)).collect())
    }

    pub fn sub(&self, o: &Size) -> Size {
        self.add(&o.neg())
    }

    pub fn mul(&self, o: &Size) -> Size {
        let mut out = Size::default();
        for (ka, va) in &self.0 {
            for (kb, vb) in &o.0 {
                let mut k: Vec<Sym> = ka.iter().chain(kb).copied().collect();
                k.sort_unstable();
                out = out.add(&Size([(k, va * vb)].into_iter().collect()));
            }
        }
        out
    }

    pub fn product<'a>(it: impl IntoIterator<Item = &'a Size>) -> Size {
        it.into_iter().fold(Size::c(1), |a, b| a.mul(b))
    }

    /// Exact division; `None` when some term does not divide.
    pub fn div(&self, d: &Size) -> Option<Size> {
        if let Some(c) = d.as_const() {
            if c == 0 {
                return None;
            }
            let mut m = BTreeMap::new();
            for (k, v) in &self.0 {
                if v % c != 0 {
                    return None;
                }
                m.insert(k.clone(), v / c);
            }
            return Some(Size(m));
        }
        // a single monomial divisor: divide each term's symbols out
        if d.0.len() != 1 {
            return if self == d { Some(Size::c(1)) } else { None };
        }
        let (dk, dv) = d.0.iter().next().expect("one term");
        let mut m = BTreeMap::new();
        for (k, v) in &self.0 {
            if v % dv != 0 {
                return None;
            }
            let mut rest = k.clone();
            for s in dk {
                let p = rest.iter().position(|x| x == s)?;
                rest.remove(p);
            }
            m.insert(rest, v / dv);
        }
        Some(Size(m))
    }

    /// The value for given symbol values.
    pub fn eval(&self, syms: &[i64]) -> i64 {
        self.0
            .iter()
            .map(|(k, v)| v * k.iter().map(|&s| syms[s as usize]).product::<i64>())
            .sum()
    }
}

impl From<i64> for Size {
    fn from(v: i64) -> Size {
        Size::c(v)
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("0");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| {
                let syms: Vec<String> = k.iter().map(|s| format!("s{s}")).collect();
                match (k.is_empty(), *v) {
                    (true, v) => v.to_string(),
                    (false, 1) => syms.join("*"),
                    (false, v) => format!("{v}*{}", syms.join("*")),
                }
            })
            .collect();
        f.write_str(&parts.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_arithmetic() {
        let t = Size::sym(0);
        let p = Size::sym(1);
        let ctx = t.add(&p);
        let scores = Size::c(9).mul(&t).mul(&ctx);
        assert_eq!(scores.eval(&[4, 10]), 9 * 4 * 14);
        assert_eq!(scores.div(&Size::c(9)).unwrap().div(&t).unwrap(), ctx);
        assert_eq!(
            Size::c(576)
                .mul(&t)
                .div(&Size::c(64))
                .unwrap()
                .eval(&[2, 0]),
            18
        );
        assert!(Size::c(5).div(&Size::c(2)).is_none());
        assert_eq!(ctx.sub(&p), t);
        assert_eq!(Size::c(3).as_const(), Some(3));
        assert_eq!(t.as_const(), None);
    }
}
