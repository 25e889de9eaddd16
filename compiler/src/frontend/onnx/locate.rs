//! Finds where a model file that does not decode goes wrong: walks the protobuf wire format of
//! the model and its graph by hand and names the node or initializer that is cut off or broken.

use super::proto::{NodeProto, TensorProto, ValueInfoProto};
use prost::Message;

/// A field key or length that cannot be read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum WireError {
    #[error("a field key at byte {at} is cut off: the file is truncated or corrupt")]
    KeyCut { at: usize },
    #[error("field {number} at byte {at} is cut off: the file is truncated")]
    ValueCut { number: u64, at: usize },
    #[error(
        "the length of field {number} at byte {at} is cut off: the file is truncated or corrupt"
    )]
    LengthCut { number: u64, at: usize },
    #[error("field {number} at byte {at} has wire type {wire}, which ONNX files never use")]
    WireType { number: u64, at: usize, wire: u64 },
}

/// One field of a message on the wire.
struct Field<'a> {
    number: u64,
    /// Byte offset of the field's key in the file.
    at: usize,
    /// For length-delimited fields, the payload (possibly cut short) and the length it claims.
    payload: Option<(&'a [u8], usize)>,
}

struct Reader<'a> {
    data: &'a [u8],
    /// Offset of `data` in the file.
    base: usize,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next field; `Err` describes a key or length that cannot be read.
    fn next(&mut self) -> Option<Result<Field<'a>, WireError>> {
        if self.pos >= self.data.len() {
            return None;
        }
        let at = self.base + self.pos;
        let Some(key) = self.varint() else {
            return Some(Err(WireError::KeyCut { at }));
        };
        let (number, wire) = (key >> 3, key & 7);
        let skip = |r: &mut Self, n: usize| -> Option<()> {
            (r.pos + n <= r.data.len()).then(|| r.pos += n)
        };
        let payload = match wire {
            0 => {
                if self.varint().is_none() {
                    return Some(Err(WireError::ValueCut { number, at }));
                }
                None
            }
            1 | 5 => {
                if skip(self, if wire == 1 { 8 } else { 4 }).is_none() {
                    return Some(Err(WireError::ValueCut { number, at }));
                }
                None
            }
            2 => {
                let Some(len) = self.varint() else {
                    return Some(Err(WireError::LengthCut { number, at }));
                };
                let start = self.pos;
                let avail = self.data.len() - start;
                let take = (len as usize).min(avail);
                self.pos = start + take;
                Some((&self.data[start..start + take], len as usize))
            }
            wire => return Some(Err(WireError::WireType { number, at, wire })),
        };
        Some(Ok(Field {
            number,
            at,
            payload,
        }))
    }
}

/// The string field `number` of a message, if it can be read from a (possibly cut) payload.
fn string_field(data: &[u8], number: u64) -> Option<String> {
    let mut r = Reader {
        data,
        base: 0,
        pos: 0,
    };
    while let Some(Ok(f)) = r.next() {
        if f.number == number {
            if let Some((p, len)) = f.payload {
                if p.len() == len {
                    return String::from_utf8(p.to_vec()).ok();
                }
            }
        }
    }
    None
}

/// Describes where decoding `data` as an ONNX model fails, naming the node or initializer.
pub fn explain(data: &[u8], err: &prost::DecodeError) -> String {
    let mut r = Reader {
        data,
        base: 0,
        pos: 0,
    };
    while let Some(f) = r.next() {
        let f = match f {
            Ok(f) => f,
            Err(m) => return format!("{m} ({err})"),
        };
        let Some((payload, len)) = f.payload else {
            continue;
        };
        if payload.len() < len {
            let what = if f.number == 7 {
                graph_problem(payload, f.at + 1).unwrap_or_default()
            } else {
                String::new()
            };
            if !what.is_empty() {
                return what;
            }
            return format!(
                "the model's field {} at byte {} claims {len} bytes but the file ends after {}: the file is truncated (copy or download it again)",
                f.number,
                f.at,
                payload.len()
            );
        }
        if f.number == 7 {
            if let Some(m) = graph_problem(payload, r.pos - payload.len()) {
                return m;
            }
        }
    }
    format!("{err}")
}

/// The first problem inside a graph message: a cut-off or undecodable node, initializer, input
/// or output, named.
fn graph_problem(data: &[u8], base: usize) -> Option<String> {
    let mut r = Reader { data, base, pos: 0 };
    let (mut nodes, mut inits) = (0usize, 0usize);
    let mut last_node = String::from("(none)");
    let mut last_init = String::from("(none)");
    while let Some(f) = r.next() {
        let f = match f {
            Ok(f) => f,
            Err(m) => {
                return Some(format!(
                    "inside the graph, {m}; the file is truncated or corrupt"
                ))
            }
        };
        let Some((payload, len)) = f.payload else {
            continue;
        };
        let cut = payload.len() < len;
        match f.number {
            1 => {
                let name = string_field(payload, 3).unwrap_or_default();
                let op = string_field(payload, 4).unwrap_or_else(|| "?".into());
                let label = if name.is_empty() { format!("node #{nodes} ({op})") } else { format!("node '{name}' ({op})") };
                if cut {
                    return Some(format!(
                        "{label} at byte {} claims {len} bytes but the file ends after {} (the last complete node is '{last_node}'): the file is truncated (copy or download it again)",
                        f.at,
                        payload.len()
                    ));
                }
                if let Err(e) = NodeProto::decode(payload) {
                    return Some(format!("{label} at byte {} does not decode: {e} (the last good node is '{last_node}')", f.at));
                }
                last_node = if name.is_empty() { format!("#{nodes}") } else { name };
                nodes += 1;
            }
            5 => {
                let name = string_field(payload, 8).unwrap_or_default();
                let label = if name.is_empty() { format!("initializer #{inits}") } else { format!("initializer '{name}'") };
                if cut {
                    return Some(format!(
                        "{label} at byte {} claims {len} bytes but the file ends after {} (the last complete initializer is '{last_init}'): the file is truncated (copy or download it again)",
                        f.at,
                        payload.len()
                    ));
                }
                if let Err(e) = TensorProto::decode(payload) {
                    return Some(format!("{label} at byte {} does not decode: {e} (the last good initializer is '{last_init}')", f.at));
                }
                last_init = if name.is_empty() { format!("#{inits}") } else { name };
                inits += 1;
            }
            11..=13 => {
                let kind = match f.number {
                    11 => "graph input",
                    12 => "graph output",
                    _ => "value info",
                };
                let name = string_field(payload, 1).unwrap_or_default();
                if cut {
                    return Some(format!("{kind} '{name}' at byte {} is cut off: the file is truncated (copy or download it again)", f.at));
                }
                if let Err(e) = ValueInfoProto::decode(payload) {
                    return Some(format!("{kind} '{name}' at byte {} does not decode: {e}", f.at));
                }
            }
            n if cut => {
                return Some(format!(
                    "graph field {n} at byte {} claims {len} bytes but the file ends after {} (after node '{last_node}' and initializer '{last_init}'): the file is truncated",
                    f.at,
                    payload.len()
                ))
            }
            _ => {}
        }
    }
    None
}
