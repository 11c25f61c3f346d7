//! `tracer completions SHELL` and `tracer man`: shell completions and man pages generated from
//! the clap definitions, so that they list exactly the commands and flags the binary takes.
use std::{io::Write, path::PathBuf};

use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

/// Shells `tracer completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in (bash: source the output or put it in
    /// /usr/share/bash-completion/completions/tracer).
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page per command (tracer.1, tracer-run.1, ...) into this directory instead of
    /// printing tracer(1) on standard output.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The completion script for `shell`, as bytes.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, "tracer", &mut out);
    out
}

/// The man pages: `tracer.1` then one per subcommand (`tracer-run.1`, ...), as (file name,
/// roff text).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let command = Cli::command().name("tracer");
    let mut pages = Vec::new();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    pages.push(("tracer.1".to_owned(), page));
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("tracer-{}", sub.get_name());
        let mut page = Vec::new();
        let sub = sub.clone().name(name.clone()).version(env!("CARGO_PKG_VERSION"));
        clap_mangen::Man::new(sub).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

pub fn run_completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    std::io::stdout().write_all(&completions(args.shell))?;
    Ok(())
}

pub fn run_man(args: &ManArgs) -> anyhow::Result<()> {
    let pages = man_pages()?;
    match &args.out_dir {
        None => std::io::stdout().write_all(&pages[0].1)?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            for (name, page) in &pages {
                let path = dir.join(name);
                std::fs::write(&path, page)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every long flag, as the clap definitions have them.
    fn commands_and_flags() -> Vec<(String, Vec<String>)> {
        let command = Cli::command();
        command
            .get_subcommands()
            .map(|sub| {
                // Hidden flags (fault injection for tests) are left out of both on purpose.
                let flags = sub
                    .get_arguments()
                    .filter(|a| !a.is_hide_set())
                    .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
                    .filter(|f| f != "--help")
                    .collect();
                (sub.get_name().to_owned(), flags)
            })
            .collect()
    }

    #[test]
    fn completions_offer_every_subcommand_and_flag() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).expect("utf-8");
            for (sub, flags) in commands_and_flags() {
                assert!(script.contains(&sub), "{shell:?}: no {sub}");
                for flag in flags {
                    // fish writes `-l flag`, the others `--flag`.
                    let bare = flag.trim_start_matches('-');
                    assert!(
                        script.contains(&flag) || script.contains(&format!("-l {bare}")),
                        "{shell:?}: no {flag} of {sub}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_man_page_per_subcommand_lists_its_flags() {
        let pages = man_pages().expect("rendered");
        let main = String::from_utf8_lossy(&pages[0].1).into_owned();
        let version = env!("CARGO_PKG_VERSION");
        assert!(main.contains(&format!(".TH tracer 1  \"tracer {version}\"")), "{main}");
        for (sub, flags) in commands_and_flags() {
            let (_, page) = pages
                .iter()
                .find(|(name, _)| name == &format!("tracer-{sub}.1"))
                .unwrap_or_else(|| panic!("no page for {sub}"));
            let page = String::from_utf8_lossy(page);
            assert!(main.contains(&sub), "tracer.1 does not list {sub}");
            let title = format!(".TH tracer-{sub} 1  \"tracer-{sub} {version}\"");
            assert!(page.contains(&title), "{sub}: {page}");
            for flag in flags {
                // roff escapes '-' as '\-'.
                let escaped = flag.replace('-', "\\-");
                assert!(page.contains(&escaped), "tracer-{sub}.1 lacks {flag}");
            }
        }
    }
}
