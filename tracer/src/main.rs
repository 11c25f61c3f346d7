use clap::Parser;

fn main() {
    let cli = tracer::cli::Cli::parse();
    std::process::exit(tracer::cli::run(cli));
}
