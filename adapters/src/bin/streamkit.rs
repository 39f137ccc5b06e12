//! The `streamkit` command line; see `streamkit --help`.

fn main() -> std::process::ExitCode {
    streamkit::cli::main()
}
