//! The `gcpool` binary: everything lives in the library; see `cli.rs`.

fn main() -> std::process::ExitCode {
    gcpool::cli::main()
}
