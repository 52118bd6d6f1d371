//! Every file of the checked-in corpus through its target: what the fuzzer found once (and the
//! protocol's worked examples it started from) is checked on every `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

#[test]
fn the_corpus_passes_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in cim_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{name}: {} seeds", files.len());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name} fails on {}", file.display());
        }
    }
}

/// Each target has a dictionary of the protocol's tokens beside its corpus.
#[test]
fn every_target_has_a_dictionary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, _) in cim_fuzz::TARGETS {
        let dict = std::fs::read_to_string(root.join(format!("{name}.dict"))).unwrap();
        let entries = dict
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count();
        assert!(entries >= 5, "{name}.dict has {entries} entries");
    }
}
