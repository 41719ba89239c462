//! `sandpitd`, the Sandpit daemon (see the `sandpitd` crate).

fn main() -> std::process::ExitCode {
    sandpitd::main()
}
