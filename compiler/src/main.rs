//! The `llmc` binary.

use clap::Parser;

fn main() -> miette::Result<()> {
    // A closed pipe (`llmc inspect M | head`) ends the process quietly, as for other tools,
    // instead of a panic on the next write.
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // wrap diagnostics at spaces only: a flag such as --max-context is never split
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .break_words(false)
                .word_splitter(textwrap::WordSplitter::NoHyphenation)
                .build(),
        )
    }));
    llmc::cli::main_with(llmc::cli::Cli::parse())
}
