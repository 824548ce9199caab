//! The docs' shell examples work as printed. Every block between `<!-- doc-test: ARGS -->` and
//! `<!-- /doc-test -->` in README.md, docs/*.md and firmware-examples/README.md runs against a
//! fresh `edgecar run ARGS` (paths relative to the repository root, which is also the commands'
//! working directory, with `edgecar` and `edgecar-device` on PATH); `localhost:3500` and
//! `localhost:9090` become the ports that gateway bound. A command is followed by the lines it
//! prints, each as `# → line` (a trailing `...` matches any rest); a command with none must exit 0.
//! The README's quickstart has its own test (readme.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use edgecar_tests::{Edgecar, edgecar_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// One marked block: where it is, the gateway's arguments, and (command, expected lines).
struct Block {
    at: String,
    args: Vec<String>,
    steps: Vec<(String, Vec<String>)>,
}

fn blocks_in(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path
        .strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("<!-- doc-test:") {
        let line_no = text[..text.len() - rest.len() + start].lines().count() + 1;
        let after = &rest[start + "<!-- doc-test:".len()..];
        let close = after.find("-->").expect("unterminated doc-test marker");
        let args = after[..close]
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let body_end = after
            .find("<!-- /doc-test -->")
            .unwrap_or_else(|| panic!("{name}:{line_no}: no <!-- /doc-test --> after the marker"));
        let body = &after[close + 3..body_end];
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        let mut cmd = String::new();
        for line in body.lines() {
            let line = line.trim_end();
            if line.starts_with("```") || line.is_empty() {
                continue;
            }
            if let Some(expected) = line.strip_prefix("# → ") {
                if !cmd.is_empty() {
                    steps.push((std::mem::take(&mut cmd), Vec::new()));
                }
                steps
                    .last_mut()
                    .unwrap_or_else(|| panic!("{name}:{line_no}: output before any command"))
                    .1
                    .push(expected.to_owned());
            } else if line.starts_with('#') {
                continue;
            } else {
                if !cmd.is_empty() && !cmd.ends_with('\n') {
                    cmd.push(' ');
                }
                match line.strip_suffix('\\') {
                    Some(part) => cmd.push_str(part),
                    None => {
                        cmd.push_str(line);
                        steps.push((std::mem::take(&mut cmd), Vec::new()));
                    }
                }
            }
        }
        assert!(
            !steps.is_empty(),
            "{name}:{line_no}: an empty doc-test block"
        );
        out.push(Block {
            at: format!("{name}:{line_no}"),
            args,
            steps,
        });
        rest = &after[body_end..];
    }
    out
}

fn all_blocks() -> Vec<Block> {
    let root = repo();
    let mut files = vec![
        root.join("README.md"),
        root.join("firmware-examples/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files.iter().flat_map(|f| blocks_in(f)).collect()
}

fn matches(got: &str, want: &str) -> bool {
    match want.strip_suffix("...") {
        Some(prefix) => got.starts_with(prefix),
        None => got == want,
    }
}

#[test]
fn every_marked_doc_example_works_as_printed() {
    let blocks = all_blocks();
    assert!(
        blocks.len() >= 3,
        "found only {} doc-test blocks",
        blocks.len()
    );
    let root = repo();
    let bin_dir = edgecar_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for block in blocks {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = block
            .args
            .iter()
            .map(|a| {
                let p = root.join(a);
                if !a.starts_with('-') && p.exists() {
                    p.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ec = Edgecar::start(dir.path(), &args);
        for (cmd, expected) in &block.steps {
            let cmd = cmd
                .replace("localhost:3500", &format!("127.0.0.1:{}", ec.port))
                .replace("localhost:9090", &format!("127.0.0.1:{}", ec.admin_port));
            let out = Command::new("bash")
                .arg("-c")
                .arg(&cmd)
                .current_dir(&root)
                .env("PATH", &path)
                .env("EDGECAR_STATE_DIR", dir.path())
                .output()
                .unwrap();
            let got = String::from_utf8_lossy(&out.stdout).replace('\r', "");
            let got: Vec<&str> = got.trim_end().lines().collect();
            if expected.is_empty() {
                assert!(
                    out.status.success(),
                    "{}: `{cmd}` failed: {}",
                    block.at,
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
            assert!(
                got.len() == expected.len() && got.iter().zip(expected).all(|(g, w)| matches(g, w)),
                "{}: `{cmd}` printed\n{}\ninstead of\n{}\nstderr: {}",
                block.at,
                got.join("\n"),
                expected.join("\n"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
