//! Property-test inputs for the wire: protobuf durations and timestamps.
//! The rest (`nasty_string` and co) is the core's.

use proptest::prelude::*;
pub use sandpit_core::testing::*;

/// Any protobuf duration, biased to the edges.
pub fn any_proto_duration() -> impl Strategy<Value = pbjson_types::Duration> {
    let seconds = prop_oneof![
        3 => 0i64..100_000,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, -1, 0, 1, 3_153_600_000, 3_153_600_001, i64::MAX]),
    ];
    let nanos = prop_oneof![
        3 => Just(0i32),
        1 => any::<i32>(),
        1 => prop::sample::select(vec![-1, 999_999_999, 1_000_000_000, i32::MAX]),
    ];
    (seconds, nanos).prop_map(|(seconds, nanos)| pbjson_types::Duration { seconds, nanos })
}

/// Any protobuf timestamp, biased to the edges (year 9999 ends at 253402300799).
pub fn any_proto_timestamp() -> impl Strategy<Value = pbjson_types::Timestamp> {
    let seconds = prop_oneof![
        3 => 1_700_000_000i64..4_000_000_000,
        1 => 250_000_000_000i64..260_000_000_000,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![
            i64::MIN, i64::MIN / 1000, -1, 0, 253_402_300_799, 253_402_300_800, i64::MAX / 1000, i64::MAX,
        ]),
    ];
    let nanos = prop_oneof![3 => Just(0i32), 1 => any::<i32>()];
    (seconds, nanos).prop_map(|(seconds, nanos)| pbjson_types::Timestamp { seconds, nanos })
}
