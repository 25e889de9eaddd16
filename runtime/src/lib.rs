//! llmc runtime: what a host program needs beside a bundle.
