//! Shell completions and manual pages for the three programs (`upmt-an`, `upmt-mh`, `upmt`),
//! generated from their clap definitions by the programs themselves:
//!
//! ```text
//! upmt-an completions bash|zsh|fish|elvish|powershell   # the script, on standard output
//! upmt-an man [--out-dir DIR]                           # every page into DIR, or the main one
//! ```
//!
//! Both subcommands are added around the program's own parser by [`parse`] and hidden, so they
//! never show in its help, its completions or its pages, and the programs' `Subcommand` enums
//! stay as they are. Generation walks the clap `Command`, so a subcommand added to a program is
//! in its completions and gets its own page without anything else changing. The Debian packages
//! (`scripts/deb`) are built this way from the very binaries they ship.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches, Command, Parser};
use clap_complete::Shell;

/// The hidden subcommand that prints a completion script.
pub const COMPLETIONS: &str = "completions";
/// The hidden subcommand that writes the manual pages.
pub const MAN: &str = "man";

/// What a command line asked for: the program's own command, or one of its assets.
#[derive(Debug)]
pub enum Invocation<P> {
    /// The program's own command, parsed.
    Run(P),
    /// A completion script or manual pages.
    Assets(Assets),
}

/// A request for generated assets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assets {
    /// The completion script for this shell, on standard output.
    Completions(Shell),
    /// Every manual page (the program's and one per subcommand) into this directory, or the
    /// program's own page on standard output when `None`.
    Man(Option<PathBuf>),
}

/// Parses the process's arguments as `P`, or, for `completions`/`man`, writes those and exits.
/// Errors, `--help` and `--version` exit as `P::parse()` would.
pub fn parse<P: Parser>() -> P {
    match try_parse_from::<P, _, _>(std::env::args_os()) {
        Ok(Invocation::Run(p)) => p,
        Ok(Invocation::Assets(assets)) => {
            let result = assets.write(P::command(), &mut std::io::stdout().lock());
            match result {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    let name = P::command().get_name().to_owned();
                    eprintln!("{name}: cannot write the {}: {e}", assets.noun());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => e.exit(),
    }
}

/// Parses `args` as `P` or as a request for assets.
pub fn try_parse_from<P, I, T>(args: I) -> Result<Invocation<P>, clap::Error>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = with_asset_commands(P::command());
    let matches = cmd.try_get_matches_from_mut(args)?;
    match matches.subcommand() {
        Some((COMPLETIONS, sub)) => Ok(Invocation::Assets(Assets::Completions(
            *sub.get_one::<Shell>("shell")
                .expect("the shell is a required argument"),
        ))),
        Some((MAN, sub)) => Ok(Invocation::Assets(Assets::Man(
            sub.get_one::<PathBuf>("out-dir").cloned(),
        ))),
        _ => from_matches(&mut cmd, &matches).map(Invocation::Run),
    }
}

fn from_matches<P: Parser>(cmd: &mut Command, matches: &ArgMatches) -> Result<P, clap::Error> {
    P::from_arg_matches(matches).map_err(|e| e.format(cmd))
}

/// `cmd` with the two hidden subcommands.
fn with_asset_commands(cmd: Command) -> Command {
    cmd.subcommand(
        Command::new(COMPLETIONS)
            .hide(true)
            .about("Print a shell completion script")
            .arg(
                Arg::new("shell")
                    .required(true)
                    .value_parser(clap::value_parser!(Shell)),
            ),
    )
    .subcommand(
        Command::new(MAN)
            .hide(true)
            .about("Write the manual pages (all of them into --out-dir, or the main one to stdout)")
            .arg(
                Arg::new("out-dir")
                    .long("out-dir")
                    .value_name("DIR")
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
    )
}

impl Assets {
    fn noun(&self) -> &'static str {
        match self {
            Assets::Completions(_) => "completion script",
            Assets::Man(_) => "manual pages",
        }
    }

    /// Writes what was asked for about the program `cmd` (its own clap definition, without the
    /// hidden asset subcommands).
    pub fn write(&self, cmd: Command, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Assets::Completions(shell) => {
                completions(cmd, *shell, out);
                Ok(())
            }
            Assets::Man(Some(dir)) => man_pages(cmd, dir).map(|_| ()),
            Assets::Man(None) => {
                let mut cmd = cmd.disable_help_subcommand(true);
                cmd.build();
                page(&cmd, &source(&cmd)).render(out)
            }
        }
    }
}

/// Writes the completion script of `cmd` for `shell`.
pub fn completions(mut cmd: Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes the manual page of `cmd` and of each of its visible subcommands, at any depth, into
/// `dir` (`upmt-an.1`, `upmt-an-run.1`, ...), and returns their paths.
pub fn man_pages(cmd: Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(
        cmd: &Command,
        source: &str,
        dir: &Path,
        out: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, source, dir, out)?;
        }
        out.push(page(cmd, source).generate_to(dir)?);
        Ok(())
    }
    // As clap_mangen::generate_to, but every page, not only the program's, names the version.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(&cmd, &source(&cmd), dir, &mut pages)?;
    pages.sort();
    Ok(pages)
}

/// The footer of every page: the program and its version ("upmt-an 0.1.0").
fn source(cmd: &Command) -> String {
    match cmd.get_version() {
        Some(v) => format!("{} {v}", cmd.get_name()),
        None => cmd.get_name().to_owned(),
    }
}

/// The page of `cmd` (built, so subcommands carry their display names, `upmt-an-run`).
fn page(cmd: &Command, source: &str) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone())
        .source(source.to_owned())
        .manual("upmt manual")
}

/// Every visible subcommand of `cmd` at any depth, as its path of names (`["policy",
/// "reload"]`); the generated `help` subcommand is left out.
pub fn subcommand_paths(cmd: &Command) -> Vec<Vec<String>> {
    fn walk(cmd: &Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            walk(sub, &path, out);
            out.push(path);
        }
    }
    let mut out = Vec::new();
    walk(cmd, &[], &mut out);
    out.sort();
    out
}

/// What the completions and pages of `cmd` miss: each visible subcommand must be named as a
/// whole word in the bash, zsh and fish scripts, and have its own page that its parent's page
/// refers to. Empty when nothing is missing. For the programs' unit tests.
pub fn missing_from_assets(cmd: &Command) -> Vec<String> {
    missing_paths(cmd, &subcommand_paths(cmd))
}

/// What the assets generated from `cmd` miss of the subcommands at `paths`.
fn missing_paths(cmd: &Command, paths: &[Vec<String>]) -> Vec<String> {
    let mut missing = Vec::new();
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut script = Vec::new();
        completions(cmd.clone(), shell, &mut script);
        let script = String::from_utf8_lossy(&script);
        for path in paths {
            let last = path.last().expect("a path has at least one name");
            if !has_word(&script, last) {
                missing.push(format!("{shell} completions of {name}: {}", path.join(" ")));
            }
        }
    }

    let dir = std::env::temp_dir().join(format!(
        "upmt-cli-assets-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        missing.push(format!(
            "manual pages of {name}: cannot create {}: {e}",
            dir.display()
        ));
        return missing;
    }
    match man_pages(cmd.clone(), &dir) {
        Err(e) => missing.push(format!("manual pages of {name}: {e}")),
        Ok(_) => {
            for path in paths {
                let page = format!("{name}-{}", path.join("-"));
                if !dir.join(format!("{page}.1")).is_file() {
                    missing.push(format!("manual page {page}.1"));
                }
                let parent = match &path[..path.len() - 1] {
                    [] => name.clone(),
                    up => format!("{name}-{}", up.join("-")),
                };
                let parent_page =
                    std::fs::read_to_string(dir.join(format!("{parent}.1"))).unwrap_or_default();
                // roff escapes the hyphens of a name: `upmt\-an\-run(1)`.
                if !parent_page
                    .replace("\\-", "-")
                    .contains(&format!("{page}(1)"))
                {
                    missing.push(format!("{parent}.1 does not refer to {page}(1)"));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    missing
}

/// Whether `word` occurs in `text` with no letter, digit, '_' or '-' on either side.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Subcommand};

    #[derive(Debug, Parser, PartialEq, Eq)]
    #[command(name = "demo", version, about = "a demo program")]
    struct Demo {
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(Debug, Subcommand, PartialEq, Eq)]
    enum DemoCommand {
        /// Start it.
        Run,
        /// Manage the policy.
        #[command(subcommand)]
        Policy(PolicyCommand),
        /// Not for users.
        #[command(hide = true)]
        Secret,
    }

    #[derive(Debug, Subcommand, PartialEq, Eq)]
    enum PolicyCommand {
        /// Read it again.
        Reload,
    }

    fn parse(args: &[&str]) -> Invocation<Demo> {
        try_parse_from::<Demo, _, _>(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_programs_own_commands_parse_as_before() {
        match parse(&["demo", "policy", "reload", "--json"]) {
            Invocation::Run(d) => assert_eq!(
                d,
                Demo {
                    json: true,
                    command: DemoCommand::Policy(PolicyCommand::Reload)
                }
            ),
            other => panic!("{other:?}"),
        }
        let err = try_parse_from::<Demo, _, _>(["demo", "nonsense"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn completions_and_man_are_asset_requests() {
        assert!(matches!(
            parse(&["demo", "completions", "fish"]),
            Invocation::Assets(Assets::Completions(Shell::Fish))
        ));
        assert!(matches!(
            parse(&["demo", "man", "--out-dir", "/tmp/x"]),
            Invocation::Assets(Assets::Man(Some(ref d))) if d == Path::new("/tmp/x")
        ));
        assert!(matches!(
            parse(&["demo", "man"]),
            Invocation::Assets(Assets::Man(None))
        ));
        assert!(try_parse_from::<Demo, _, _>(["demo", "completions", "cmd.exe"]).is_err());
    }

    #[test]
    fn the_asset_commands_stay_out_of_help_and_completions() {
        let mut help = Vec::new();
        with_asset_commands(Demo::command())
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("policy"), "{help}");
        assert!(!has_word(&help, COMPLETIONS), "{help}");
        assert!(!has_word(&help, MAN), "{help}");
        let mut script = Vec::new();
        Assets::Completions(Shell::Bash)
            .write(Demo::command(), &mut script)
            .unwrap();
        let script = String::from_utf8(script).unwrap();
        assert!(has_word(&script, "reload"), "{script}");
        // Generated from the program's own command: clap_complete's bash script would also
        // complete hidden subcommands.
        assert!(!has_word(&script, COMPLETIONS));
    }

    #[test]
    fn every_visible_subcommand_at_any_depth_is_listed() {
        assert_eq!(
            subcommand_paths(&Demo::command()),
            [vec!["policy"], vec!["policy", "reload"], vec!["run"]]
        );
    }

    #[test]
    fn the_demo_has_complete_assets_and_a_missing_subcommand_is_named() {
        assert_eq!(missing_from_assets(&Demo::command()), Vec::<String>::new());
        // A subcommand that the command the assets come from does not have.
        let mut paths = subcommand_paths(&Demo::command());
        paths.push(vec!["policy".into(), "rotate".into()]);
        assert_eq!(
            missing_paths(&Demo::command(), &paths),
            [
                "bash completions of demo: policy rotate",
                "zsh completions of demo: policy rotate",
                "fish completions of demo: policy rotate",
                "manual page demo-policy-rotate.1",
                "demo-policy.1 does not refer to demo-policy-rotate(1)",
            ]
        );
    }

    #[test]
    fn the_main_page_names_the_program_and_its_version() {
        let mut page = Vec::new();
        Assets::Man(None).write(Demo::command(), &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".TH demo 1"), "{page}");
        assert!(!page.contains("demo\\-help(1)"), "{page}");
        assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
        assert!(page.contains("a demo program"), "{page}");
    }

    #[test]
    fn every_page_of_every_subcommand_names_the_program_and_its_version() {
        let dir =
            std::env::temp_dir().join(format!("upmt-cli-assets-pages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pages = man_pages(Demo::command(), &dir);
        let reload = std::fs::read_to_string(dir.join("demo-policy-reload.1"));
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = pages
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "demo-policy-reload.1",
                "demo-policy.1",
                "demo-run.1",
                "demo.1"
            ]
        );
        let reload = reload.unwrap();
        let version = format!("demo {}", env!("CARGO_PKG_VERSION"));
        assert!(reload.contains(&version), "{reload}");
        assert!(reload.contains("Read it again"), "{reload}");
    }

    #[test]
    fn words_are_whole() {
        assert!(has_word("a run b", "run"));
        assert!(has_word("(run)", "run"));
        assert!(!has_word("rerun", "run"));
        assert!(!has_word("run-fast", "run"));
        assert!(!has_word("upmt__run_x", "run"));
    }
}
