//! Durations to the sidecar and waits on this side, saturating.
//!
//! A `std::time::Duration` reaches about 584 billion years, but what the SDK
//! turns it into does not: a `google.protobuf.Duration` holds about 10,000
//! years (315,576,000,000 s), a gRPC timeout about 11,000 (tonic panics past
//! it), and an `Instant` plus a duration past what its clock holds panics.
//! So:
//!
//! - every duration sent goes through [`to_proto`], which sends one past the
//!   protobuf range as its largest: a field that takes it means "no bound"
//!   (a lookup's `max_age`), and one that does not is refused by the
//!   sidecar naming the field and its range (a `ttl` is at most 366 days),
//!   never with the wrapped-around value a cast made of it ("-1e-09s");
//! - every wait the SDK schedules (a deadline, a gRPC timeout, a keepalive)
//!   is at most [`LONGEST_WAIT`], through [`capped`].

use std::time::Duration;

/// The largest `google.protobuf.Duration`'s seconds (about 10,000 years).
pub(crate) const MAX_PROTO_SECONDS: i64 = 315_576_000_000;

/// The longest wait the SDK schedules: 30 years, tokio's own "far future".
/// Longer ones (up to `Duration::MAX`) mean "never" all the same.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `d` as a `google.protobuf.Duration`, the largest one past its range.
pub(crate) fn to_proto(d: Duration) -> prost_types::Duration {
    let largest = Duration::new(MAX_PROTO_SECONDS as u64, 999_999_999);
    let d = d.min(largest);
    prost_types::Duration {
        seconds: d.as_secs() as i64, // at most MAX_PROTO_SECONDS: no wrap
        nanos: d.subsec_nanos() as i32,
    }
}

/// `d`, at most [`LONGEST_WAIT`]: safe to add to an `Instant` or to send as
/// a gRPC timeout.
pub(crate) fn capped(d: Duration) -> Duration {
    d.min(LONGEST_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_past_the_protobuf_range_are_sent_as_its_largest() {
        let proto = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(to_proto(Duration::ZERO), proto(0, 0));
        assert_eq!(to_proto(Duration::from_millis(1500)), proto(1, 500_000_000));
        let largest = proto(MAX_PROTO_SECONDS, 999_999_999);
        let at_the_end = Duration::new(MAX_PROTO_SECONDS as u64, 999_999_999);
        assert_eq!(to_proto(at_the_end), largest);
        for past in [
            at_the_end + Duration::from_nanos(1),
            Duration::from_secs(1 << 63), // wrapped to i64::MIN when cast
            Duration::from_secs(u64::MAX),
            Duration::MAX, // wrapped to {-1, 999999999}: "-1e-09s"
        ] {
            assert_eq!(to_proto(past), largest, "{past:?}");
        }
    }

    #[test]
    fn waits_are_capped_so_that_deadlines_do_not_overflow() {
        assert_eq!(capped(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(capped(Duration::MAX), LONGEST_WAIT);
        // An Instant (std's and tokio's) takes it, with room to spare.
        let far = tokio::time::Instant::now() + capped(Duration::MAX) + LONGEST_WAIT;
        assert!(far > tokio::time::Instant::now());
        assert!(std::time::Instant::now()
            .checked_add(Duration::MAX)
            .is_none());
    }
}
