//! Writing a bundle to disk: object, static library, shared library on request, header,
//! weights, manifest, and the intermediate forms `--emit` asks for.

use llmc_backends::cpu::Bundle;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("linking {path} failed: {msg}")]
    Link { path: PathBuf, msg: String },
}

/// What to write besides the object, static library, header, weights and manifest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outputs {
    pub so: bool,
    pub llvm_ir: bool,
    pub asm: bool,
    /// Put the weights inside the object (a `<name>_weights` symbol) instead of a file.
    pub embed_weights: bool,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    std::fs::write(path, bytes).map_err(|e| WriteError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// A `!<arch>` archive holding one member (what `ar rcs` writes, without a symbol table: the
/// linker reads the object's own).
pub fn ar_archive(member: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    let name = format!("{member}/");
    let header = format!(
        "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        name,
        0,
        0,
        0,
        644,
        data.len()
    );
    out.extend(header.as_bytes());
    out.extend(data);
    if data.len() % 2 == 1 {
        out.push(b'\n');
    }
    out
}

/// The files a bundle consists of, by name.
pub fn file_names(name: &str, o: &Outputs) -> Vec<String> {
    let mut v = vec![
        format!("{name}.o"),
        format!("lib{name}.a"),
        format!("{name}.h"),
        "manifest.json".to_string(),
    ];
    if !o.embed_weights {
        v.push(format!("{name}.weights"));
    }
    if o.so {
        v.push(format!("lib{name}.so"));
    }
    if o.llvm_ir {
        v.push(format!("{name}.ll"));
    }
    if o.asm {
        v.push(format!("{name}.s"));
    }
    v
}

/// Writes the bundle into `dir` (created if missing). Files already there are replaced only
/// with `force`; the error names the first that would be.
pub fn write_bundle(
    b: &Bundle,
    dir: &Path,
    o: &Outputs,
    force: bool,
) -> Result<Vec<PathBuf>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|e| WriteError::Io {
        path: dir.to_path_buf(),
        msg: e.to_string(),
    })?;
    let names = file_names(&b.name, o);
    if !force {
        if let Some(p) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
            return Err(WriteError::Io {
                path: p,
                msg: "exists; pass --force to replace the bundle, or choose another -o".into(),
            });
        }
    }
    let obj = dir.join(format!("{}.o", b.name));
    write(&obj, &b.object)?;
    write(
        &dir.join(format!("lib{}.a", b.name)),
        &ar_archive(&format!("{}.o", b.name), &b.object),
    )?;
    write(&dir.join(format!("{}.h", b.name)), b.header.as_bytes())?;
    if !o.embed_weights {
        write(&dir.join(format!("{}.weights", b.name)), &b.weights)?;
    }
    let manifest = serde_json::to_string_pretty(&b.manifest).expect("json");
    write(&dir.join("manifest.json"), manifest.as_bytes())?;
    if let Some(ir) = &b.llvm_ir {
        write(&dir.join(format!("{}.ll", b.name)), ir.as_bytes())?;
    }
    if let Some(s) = &b.asm {
        write(&dir.join(format!("{}.s", b.name)), s.as_bytes())?;
    }
    if o.so {
        link_shared(&obj, &dir.join(format!("lib{}.so", b.name)))?;
    }
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

/// Links an object into a shared library with the system C compiler (`$CC`, else `cc`),
/// without libc: the object needs nothing from it.
pub fn link_shared(obj: &Path, out: &Path) -> Result<(), WriteError> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let res = Command::new(&cc)
        .args(["-shared", "-nostdlib", "-o"])
        .arg(out)
        .arg(obj)
        .output();
    match res {
        Ok(r) if r.status.success() => Ok(()),
        Ok(r) => Err(WriteError::Link {
            path: out.to_path_buf(),
            msg: String::from_utf8_lossy(&r.stderr).into_owned(),
        }),
        Err(e) => Err(WriteError::Link {
            path: out.to_path_buf(),
            msg: format!("cannot run '{cc}': {e} (install a C compiler or set CC)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout() {
        let a = ar_archive("m.o", b"abc");
        assert!(a.starts_with(b"!<arch>\nm.o/"));
        assert_eq!(a.len(), 8 + 60 + 4);
        assert_eq!(&a[8 + 58..8 + 60], b"`\n");
    }
}
