//! The fuzz target's checks, run by CI: its seed inputs are each stored, and arbitrary inputs
//! (the proptest cases) keep every promise of [`AcceptPath::check`].

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::verify::properties::{NAMES, body, header_value};

thread_local! {
    /// One per test thread: `check` reads the store's deliveries of the request it sent.
    static ACCEPT: AcceptPath = AcceptPath::new();
}

fn seeds() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/accept")
}

#[test]
fn every_seed_input_is_stored() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(seeds()).expect("the seed directory") {
        let path = entry.expect("a seed").path();
        let input = std::fs::read(&path).expect("a seed");
        let answer = ACCEPT.with(|accept| accept.check(&input));
        assert_eq!(
            answer,
            Ok(Some(Answer {
                status: 202,
                stored: true
            })),
            "{}",
            path.display()
        );
        names.push(path);
    }
    // One of each type the harness can prove (not the ID-token types), and the filtered one.
    assert_eq!(names.len(), 12, "{names:?}");
}

#[test]
fn a_receiver_path_carried_in_the_input_is_served() {
    let path = ACCEPT.with(|accept| accept.receivers[0].1.clone());
    let raw = [&[0, flag::RAW_PATH], path.as_bytes(), b"\n\n"].concat();
    let answer = ACCEPT.with(|accept| accept.check(&raw));
    assert_eq!(answer.map(|a| a.map(|a| a.status)), Ok(Some(202)));

    let input = [&[0, flag::RAW_PATH], &b"not a path\n\n"[..]].concat();
    assert_eq!(ACCEPT.with(|accept| accept.check(&input)), Ok(None));
}

#[test]
fn a_delivery_stored_for_a_refused_request_breaks_a_promise() {
    // The checks catch a store that holds more than the answer says: here a delivery left by
    // an earlier request is taken as this one's.
    ACCEPT.with(|accept| {
        let seed = std::fs::read(seeds().join("generic")).expect("a seed");
        accept.runtime.block_on(async {
            let (request, _) = accept.request(&seed).expect("a request");
            accept.hooks.answer(request).await;
        });
        let unknown = [&[u8::MAX, 0], &b"\n\n"[..]].concat();
        let broken = accept
            .check(&unknown)
            .expect_err("a 404 with a delivery stored");
        assert!(broken.contains("yet a delivery was stored"), "{broken}");
    });
}

/// Inputs in the harness's format: a receiver, flags, header lines the verifiers read (or an
/// arbitrary path first), and bodies of any bytes or JSON with arbitrary ids.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let line = (proptest::sample::select(NAMES), header_value())
        .prop_map(|(name, value)| [name.as_bytes(), b": ", value.as_bytes()].concat());
    (
        any::<u8>(),
        0..8u8,
        prop_oneof!["/[ -~]{0,40}", "/hook/(%[0-9A-F]{2}){1,4}"],
        proptest::collection::vec(line, 0..8),
        body(),
    )
        .prop_map(|(target, flags, path, lines, body)| {
            let mut input = vec![target, flags];
            if flags & flag::RAW_PATH != 0 {
                input.extend_from_slice(path.as_bytes());
                input.push(b'\n');
            }
            input.extend_from_slice(&lines.join(&b'\n'));
            input.extend_from_slice(b"\n\n");
            input.extend_from_slice(&body);
            input
        })
}

proptest! {
    #[test]
    fn any_input_keeps_every_promise(input in input()) {
        let checked = ACCEPT.with(|accept| accept.check(&input));
        prop_assert_eq!(checked.err(), None);
    }

    #[test]
    fn any_bytes_keep_every_promise(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let checked = ACCEPT.with(|accept| accept.check(&input));
        prop_assert_eq!(checked.err(), None);
    }
}
