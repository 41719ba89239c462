//! `sandpit-helper`: see the library's documentation.

fn main() -> std::process::ExitCode {
    sandpit_helper::main(std::env::args_os().skip(1).collect())
}
