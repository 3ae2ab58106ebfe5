//! The `streamguard` binary: a thin shell over the library (see `cli`).

fn main() -> std::process::ExitCode {
    streamguard::cli::main()
}
