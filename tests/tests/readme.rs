//! The README's quickstart works exactly as printed: every command in its quickstart block runs
//! against a fresh edgecar and prints what the README says it prints.

use std::path::Path;
use std::process::Command;

use edgecar_tests::Edgecar;

/// (command, expected output) pairs from the block between the quickstart markers.
fn quickstart() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme.find("<!-- quickstart").expect("quickstart marker");
    let end = readme
        .find("<!-- /quickstart -->")
        .expect("quickstart end marker");
    let mut steps = Vec::new();
    let mut cmd = String::new();
    for line in readme[start..end].lines() {
        if let Some(expected) = line.strip_prefix("# → ") {
            steps.push((std::mem::take(&mut cmd), expected.to_owned()));
        } else if line.starts_with("curl") || !cmd.is_empty() {
            let (part, more) = match line.strip_suffix('\\') {
                Some(p) => (p, true),
                None => (line, false),
            };
            cmd.push_str(part);
            if !more {
                cmd.push('\n');
            }
        }
    }
    steps
}

#[test]
fn readme_quickstart_works_as_printed() {
    let steps = quickstart();
    assert!(
        steps.len() >= 8,
        "found only {} quickstart steps",
        steps.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    for (cmd, expected) in steps {
        let cmd = cmd
            .trim()
            .replace("localhost:3500", &format!("127.0.0.1:{}", ec.port));
        let out = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
        let got = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert_eq!(got.trim(), expected, "README command:\n{cmd}");
    }
}
