//! llmc compiler library: frontends, driver and the CLI commands.
