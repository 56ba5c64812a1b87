//! `upmt`: the upmt command-line tool. Inspects the running mobile-host daemon and moves flows
//! and apps between its tunnels (`status`, `apps`, `flows`, `move`, `unpin`, `policy reload`,
//! `watch`), and makes keys in the style of `wg` (`genkey`, `pubkey`).

use upmt_mobile_host::cli::{self, Cli};

fn main() {
    // `completions` and `man` (hidden) are answered here; see upmt_sys::cli_assets.
    let args: Cli = upmt_sys::cli_assets::parse();
    let result = cli::run(args, &mut std::io::stdout().lock());
    if let Err(e) = result {
        eprintln!("upmt: {e:#}");
        std::process::exit(1);
    }
}
