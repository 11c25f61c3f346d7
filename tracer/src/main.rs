fn main() {
    std::process::exit(tracer::cli::main());
}
