//! llmc passes: the rewrite driver, canonicalization and fusion patterns over the graph IR.
