//! The README and `docs/`: every relative link names a file of the repository, and every
//! `#anchor` a heading of the page it points at, so no reference leads nowhere.

use std::path::{Path, PathBuf};

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn headings(page: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.push(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The targets of `[text](target)` links outside code blocks.
fn links(page: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

fn pages() -> Vec<PathBuf> {
    let root = fluxgate_tests::repository_root();
    let mut pages = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    for entry in docs {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages
}

#[test]
fn every_link_of_the_readme_and_docs_leads_somewhere() {
    let mut broken = Vec::new();
    let pages = pages();
    assert!(pages.len() > 5, "the docs are there: {pages:?}");
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read page");
        let dir = page.parent().unwrap_or(Path::new("."));
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if !fragment.is_empty() {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !headings(&target_text).iter().any(|h| h == fragment) {
                    broken.push(format!("{}: {link}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_front_page() {
    let readme = std::fs::read_to_string(fluxgate_tests::repository_root().join("README.md"))
        .expect("README");
    assert!(readme.len() < 10 * 1024, "README is {} bytes", readme.len());
    for section in [
        "## Quick start",
        "## Moving from Flux's receiver",
        "## Documentation",
    ] {
        assert!(readme.contains(section), "README lacks {section}");
    }
}

#[test]
fn anchors_and_links_are_read_as_github_does() {
    assert_eq!(anchor(" Install in a cluster"), "install-in-a-cluster");
    assert_eq!(
        anchor(" History, replay and the `fluxgate` CLI"),
        "history-replay-and-the-fluxgate-cli"
    );
    assert_eq!(
        links("see [a](docs/a.md#b) and [c](https://x)"),
        ["docs/a.md#b", "https://x"]
    );
}

#[test]
fn the_security_page_gives_the_nats_account_the_tests_run() {
    let root = fluxgate_tests::repository_root();
    let page = std::fs::read_to_string(root.join("docs/security.md")).expect("docs/security.md");
    let account = std::fs::read_to_string(root.join("deploy/nats/fluxgate-account.conf"))
        .expect("the account file");
    assert!(
        page.contains(&format!("```conf\n{account}```")),
        "docs/security.md does not hold deploy/nats/fluxgate-account.conf verbatim"
    );
}
