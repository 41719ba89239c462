//! Test-only helpers shared by the property tests: inputs a hostile or
//! careless client or operator might send.

use proptest::prelude::*;

/// Strings that stress validation: valid-looking identifiers, arbitrary
/// unicode, control characters and NUL, whitespace only, and huge ones.
pub fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{1,12}",
        2 => any::<String>(),
        1 => "[\\x00-\\x1f\\x7f ]{0,6}",
        1 => "[ \t\r\n]{0,4}",
        1 => prop::sample::select(vec![
            "OFFICIAL", "official_sensitive", " Official-Sensitive ", "SECRET", "TOP SECRET", "RESTRICTED",
            "low", "MEDIUM", " high", "0", "-1", "18446744073709551616", "../../etc/passwd", "a\u{0}b",
            "\u{202e}lanoitcurts", "e\u{301}", "\u{1F600}", "",
        ]).prop_map(String::from),
        1 => (prop::sample::select(vec!["a", "\u{e9}", "\u{1F600}", " "]), 100usize..20_000)
            .prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Small lists of [`nasty_string`], sometimes long ones.
pub fn nasty_list() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => prop::collection::vec(nasty_string(), 0..4),
        1 => prop::collection::vec("[a-z]{1,3}", 60..70),
    ]
}

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

/// Mostly values from `valid`, sometimes a [`nasty_string`]: so that a case
/// with several fields gets past the first one often enough.
pub fn mostly(valid: impl Strategy<Value = String> + 'static) -> impl Strategy<Value = String> {
    prop_oneof![3 => valid, 1 => nasty_string()]
}
