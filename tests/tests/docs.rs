//! The docs' shell examples work as printed. Every block between `<!-- doc-test: ARGS -->` and
//! `<!-- /doc-test -->` in README.md, docs/*.md and firmware-examples/README.md runs against a
//! fresh `edgecar run ARGS` (paths relative to the repository root, which is also the commands'
//! working directory, with `edgecar`, `edgecar-device` and `edgecar-sensor-simulator` on PATH);
//! `localhost:3500` and `localhost:9090` become the ports that gateway bound, and the
//! environment points the CLIs at it (`STATE_DIRECTORY` for `edgecar device ...`,
//! `EDGECAR_MQTT_PORT` for the device programs). A command is followed by the lines it prints,
//! each as `# → line` (a trailing `...` matches any rest); a command with none must exit 0.
//! The README's quickstart has its own test (readme.rs).
//!
//! Every other shell block (`sh`, `bash`, `console`) must say why it is not run, in a
//! `<!-- not run: REASON -->` line right above it (it needs root, a board, another machine, a
//! release build, ...): a new example is either tested or says why not.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// Every Markdown file whose examples are checked: the READMEs and docs/.
fn doc_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![
        root.join("README.md"),
        root.join("firmware-examples/README.md"),
    ];
    for dir in [
        "docs",
        "firmware-examples/sensor-simulator",
        "firmware-examples/esp32-pubsubclient",
        "firmware-examples/micropython-umqtt",
    ] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

fn all_blocks() -> Vec<Block> {
    doc_files().iter().flat_map(|f| blocks_in(f)).collect()
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
        // Variables a command exports are there for the next ones, as in one terminal.
        let env_file = dir.path().join("doc-test.env");
        let mut groups = Vec::new();
        for (cmd, expected) in &block.steps {
            let cmd = cmd
                .replace("localhost:3500", &format!("127.0.0.1:{}", ec.port))
                .replace("localhost:9090", &format!("127.0.0.1:{}", ec.admin_port));
            let script = format!(
                "[ -f \"$DOC_TEST_ENV\" ] && . \"$DOC_TEST_ENV\"\n{cmd}\nrc=$?\nexport -p > \"$DOC_TEST_ENV\"\nexit $rc\n"
            );
            // Its own process group, so that what it leaves running in the background is
            // stopped with the block.
            let child = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(&root)
                .env("PATH", &path)
                .env("DOC_TEST_ENV", &env_file)
                .env("STATE_DIRECTORY", dir.path())
                .env("EDGECAR_MQTT_PORT", ec.mqtt_port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap();
            groups.push(child.id());
            let out = child.wait_with_output().unwrap();
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
        for pgid in groups {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The opening lines of shell blocks that are neither in a doc-test or quickstart region nor
/// preceded by `<!-- not run: REASON -->`, as `file:line`.
fn unexplained_shell_blocks(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path
        .strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = Vec::new();
    let (mut tested, mut in_block) = (false, false);
    let mut previous = "";
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("<!-- doc-test:") || t.starts_with("<!-- quickstart") {
            tested = true;
        } else if t == "<!-- /doc-test -->" || t == "<!-- /quickstart -->" {
            tested = false;
        }
        if let Some(fence) = t.strip_prefix("```") {
            if !in_block {
                let shell = matches!(fence.trim(), "sh" | "bash" | "shell" | "console");
                let reason = previous
                    .strip_prefix("<!-- not run:")
                    .and_then(|r| r.strip_suffix("-->"))
                    .is_some_and(|r| !r.trim().is_empty());
                if shell && !tested && !reason {
                    out.push(format!("{name}:{}", i + 1));
                }
            }
            in_block = !in_block;
        }
        if !t.is_empty() {
            previous = t;
        }
    }
    out
}

#[test]
fn every_shell_example_is_run_or_says_why_not() {
    let missing: Vec<String> = doc_files()
        .iter()
        .flat_map(|f| unexplained_shell_blocks(f))
        .collect();
    assert!(
        missing.is_empty(),
        "shell examples neither run by a test (<!-- doc-test: ARGS -->) nor marked <!-- not run: REASON -->:\n  {}",
        missing.join("\n  ")
    );
}
