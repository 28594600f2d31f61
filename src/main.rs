fn main() -> std::process::ExitCode {
    comfystore::cli::main()
}
