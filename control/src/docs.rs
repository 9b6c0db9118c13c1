//! Man pages and shell completions made from a binary's clap definition, for the Debian
//! packages (`scripts/package.sh`).
//!
//! Each binary (`loupe`, `loupectl`, `loupe-bench`) has a hidden `generate-docs --out DIR`
//! subcommand that hands its own `clap::Command` to [`generate`]. The definitions live in
//! the binaries' `main.rs`, so the binary itself is the one place that can render them
//! without moving every CLI struct into a library or duplicating them in a build script;
//! the pages then always describe exactly the binary that is packaged beside them. Hidden
//! from `--help`, from the completions and from the man pages (clap_mangen and
//! clap_complete skip hidden subcommands).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// What [`generate`] wrote, for the caller to print.
#[derive(Debug, Default)]
pub struct GeneratedDocs {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes `<out>/man/<name>[-<subcommand>…].1` for the command and each (non-hidden)
/// subcommand, and `<out>/completions/` for bash (`<name>`), zsh (`_<name>`) and fish
/// (`<name>.fish`): the file names Debian's bash-completion, zsh and fish look up.
pub fn generate(command: clap::Command, out: &Path) -> io::Result<GeneratedDocs> {
    let name = command.get_name().to_string();
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completion_dir)?;

    clap_mangen::generate_to(command.clone(), &man_dir)?;
    let mut generated = GeneratedDocs::default();
    for entry in fs::read_dir(&man_dir)? {
        let path = entry?.path();
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if file_name == format!("{name}.1") || file_name.starts_with(&format!("{name}-")) {
            generated.man_pages.push(path);
        }
    }
    generated.man_pages.sort();

    let mut completed = without_hidden_subcommands(&command);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let written = clap_complete::generate_to(shell, &mut completed, &name, &completion_dir)?;
        generated.completions.push(written);
    }
    Ok(generated)
}

/// `command` without its hidden subcommands: clap_complete (unlike clap_mangen) completes
/// them too, and clap can add subcommands but not take one away, so the command is made
/// again from its parts. Only what completion reads is kept: names, arguments (global
/// ones too) and the visible subcommands.
fn without_hidden_subcommands(command: &clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(command.get_name().to_string())
        .args(command.get_arguments().cloned())
        .subcommands(command.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(version) = command.get_version() {
        visible = visible.version(version.to_string());
    }
    if let Some(about) = command.get_about() {
        visible = visible.about(about.clone());
    }
    visible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "demo", about = "a demo")]
    struct Demo {
        #[command(subcommand)]
        verb: Verb,
    }

    #[derive(clap::Subcommand)]
    enum Verb {
        /// Says hello.
        Hello {
            #[arg(long)]
            loud: bool,
        },
        #[command(hide = true)]
        Secret,
    }

    #[test]
    fn pages_for_each_visible_subcommand_and_three_shells() {
        use clap::CommandFactory;
        let dir = std::env::temp_dir().join(format!("loupe-docs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let generated = generate(Demo::command(), &dir).unwrap();
        let names: Vec<String> = generated
            .man_pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["demo-hello.1", "demo.1"]);
        let hello = fs::read_to_string(dir.join("man/demo-hello.1")).unwrap();
        assert!(hello.contains("Says hello"), "{hello}");
        assert!(hello.contains("loud"), "{hello}");
        for file in ["demo.bash", "_demo", "demo.fish"] {
            let text = fs::read_to_string(dir.join("completions").join(file)).unwrap();
            assert!(text.contains("hello"), "{file}: {text}");
            assert!(
                !text.contains("secret"),
                "{file} completes the hidden subcommand: {text}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
