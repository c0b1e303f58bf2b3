//! The whole accept path -- routing, body limits, verification of every type, filters and the
//! delivery builder -- under arbitrary requests, each checked against what ingest promises
//! (`fluxgate_ingest::testing::AcceptPath::check`). The input format is described there.
#![no_main]

use std::sync::LazyLock;

use fluxgate_ingest::testing::AcceptPath;
use libfuzzer_sys::fuzz_target;

static ACCEPT: LazyLock<AcceptPath> = LazyLock::new(AcceptPath::new);

fuzz_target!(|input: &[u8]| {
    if let Err(broken) = ACCEPT.check(input) {
        panic!("{broken}");
    }
});
