//! Packed snapshots (`wire::packed`) as a damaged state dir or a broken control may hand them to an edge.
//! Invariants: decoding never panics nor reserves memory the input cannot fill; what decodes encodes and
//! decodes back to the same snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_wire::packed;

fuzz_target!(|data: &[u8]| {
    // Most inputs would fail the mark: put it in front, so the fuzzer explores what follows it.
    let mut input = packed::MAGIC.to_vec();
    input.extend_from_slice(&packed::FORMAT.to_le_bytes());
    input.extend_from_slice(data);
    let Ok(snapshot) = packed::decode(&input) else { return };
    let mut again = Vec::new();
    packed::encode(&snapshot, &mut again).expect("encodes");
    assert_eq!(packed::decode(&again).expect("decodes again"), snapshot);
});
