//! The `comfystore` command. Everything here is the edge: argument parsing (clap), progress
//! bars, output formats and exit codes. The work is done by the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
