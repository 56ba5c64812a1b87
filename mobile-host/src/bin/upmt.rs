//! `upmt`: the upmt command-line tool. Key tools (`genkey`, `pubkey`) in the style of `wg`;
//! commands that talk to the running daemon come later.

use clap::{Parser, Subcommand};

use upmt_mobile_host::cli;

#[derive(Parser)]
#[command(name = "upmt", version, about = "upmt command-line tool")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on stdin, print its public key, like `wg pubkey`.
    Pubkey,
}

fn main() {
    let args = Args::parse();
    let stdout = &mut std::io::stdout().lock();
    let result = match args.command {
        Command::Genkey => cli::genkey::run(stdout),
        Command::Pubkey => cli::pubkey::run(&mut std::io::stdin().lock(), stdout),
    };
    if let Err(e) = result {
        eprintln!("upmt: {e:#}");
        std::process::exit(1);
    }
}
