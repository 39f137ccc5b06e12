//! The `streamkit` command line, built inside the test package so that the parity suite can run the
//! real `streamkit serve` as a child process (and `kill -9` it) with the code under test.

fn main() -> std::process::ExitCode {
    streamkit::cli::main()
}
