//! The `llmc` binary.

use clap::Parser;

fn main() -> miette::Result<()> {
    llmc::cli::main_with(llmc::cli::Cli::parse())
}
