//! `sandpit`, the command-line client (see the `sandpit-cli` crate).

fn main() -> std::process::ExitCode {
    sandpit_cli::main()
}
