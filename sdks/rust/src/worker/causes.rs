//! Reading a handler's error for its failure: its text, its type and its
//! `source()` chain, each bounded, none panicking out (a `Display` or
//! `Debug` that panics is named so; a `source()` that panics ends the chain),
//! so that the attempt is reported whatever the error does.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use super::TaskCause;
use crate::error::Error;

/// What the sidecar keeps of a failure's message: its first 32 KiB of UTF-8
/// (common.proto). A longer message is read no further.
pub(super) const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The most causes a chain is walked past those kept, counting them: a
/// `source()` chain cannot end (a self-referencing error, a chain of
/// `'static` errors in a cycle), and the walk must.
pub(super) const MAX_COUNTED_CAUSES: u32 = 10_000;
/// The most characters of a failure's type the sidecar keeps (common.proto).
const MAX_TYPE_CHARS: usize = 256;

/// The causes of an error, read from its `source()` chain.
pub(super) struct Chain {
    /// The first causes, outermost first.
    pub causes: Vec<TaskCause>,
    /// How many more there were (at most [`MAX_COUNTED_CAUSES`]).
    pub dropped: u32,
    /// The retry hint of the first error of this SDK in the chain, if any.
    pub retry_after: Option<Duration>,
    /// Whether the chain has an error of this SDK.
    pub sdk_error: bool,
}

/// Walks `first` and its sources: the first `keep` of them as causes, the
/// rest counted (up to [`MAX_COUNTED_CAUSES`], where the walk stops).
pub(super) fn walk(first: Option<&(dyn StdError + 'static)>, keep: usize) -> Chain {
    let mut chain = Chain {
        causes: Vec::new(),
        dropped: 0,
        retry_after: None,
        sdk_error: false,
    };
    let mut next = first;
    while let Some(e) = next {
        if !chain.sdk_error {
            if let Some(sdk) = e.downcast_ref::<Error>() {
                chain.sdk_error = true;
                chain.retry_after = sdk.retry_delay;
            }
        }
        if chain.causes.len() < keep {
            let error_type = type_of(e);
            let message = text_of(e, &error_type);
            chain.causes.push(TaskCause {
                error_type,
                message,
            });
        } else {
            chain.dropped += 1;
            if chain.dropped == MAX_COUNTED_CAUSES {
                break;
            }
        }
        next = source_of(e);
    }
    chain
}

/// `e.source()`, or `None` when it panics.
pub(super) fn source_of<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn StdError + 'static)> {
    catch_unwind(AssertUnwindSafe(|| e.source())).unwrap_or(None)
}

/// What `e` says (its `Display`), its first 32 KiB of UTF-8; when its
/// `Display` panics, a message saying so after `error_type`.
pub(super) fn text_of(e: &(dyn StdError + 'static), error_type: &str) -> String {
    let mut text = Bounded {
        text: String::new(),
        limit: MAX_MESSAGE_BYTES,
        full: false,
    };
    let read = catch_unwind(AssertUnwindSafe(|| {
        let _ = write!(text, "{e}");
    }));
    // A Display that panicked because the bound ended its writing (an
    // `unwrap` of the write) was read all the same.
    if read.is_ok() || text.full {
        return text.text;
    }
    let unread = "its message could not be read: its Display panicked";
    if error_type.is_empty() {
        format!("({unread})")
    } else {
        format!("{error_type} ({unread})")
    }
}

/// The type of an error known only as a `dyn Error`, which has no type
/// name: for an error of this SDK, or one of std, serde_json, tonic or
/// tokio that handlers commonly meet, its Rust type name, as the failure's
/// own type (`std::io::error::Error`); for any other, the leading identifier
/// of its `Debug` output (the type's name for a derived `Debug`, or an
/// enum's variant's), or "" when that is not an identifier (or panics).
pub(super) fn type_of(e: &(dyn StdError + 'static)) -> String {
    macro_rules! named {
        ($($t:ty),* $(,)?) => {
            $(
                if e.is::<$t>() {
                    return std::any::type_name::<$t>().to_string();
                }
            )*
        };
    }
    named!(
        Error,
        std::io::Error,
        std::fmt::Error,
        std::num::ParseIntError,
        std::num::ParseFloatError,
        std::str::Utf8Error,
        std::string::FromUtf8Error,
        serde_json::Error,
        tonic::Status,
        tonic::transport::Error,
        tokio::task::JoinError,
        tokio::time::error::Elapsed,
    );
    let mut name = Identifier(String::new());
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _ = write!(name, "{e:?}");
    }));
    name.0
}

/// Collects what is written up to `limit` bytes (whole characters), then
/// fails the write, which ends the formatting.
struct Bounded {
    text: String,
    limit: usize,
    full: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.full {
            return Err(fmt::Error);
        }
        let room = self.limit - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.full = true;
        Err(fmt::Error)
    }
}

/// Collects the identifier that starts what is written (at most 256
/// characters), then fails the write, which ends the formatting.
struct Identifier(String);

impl fmt::Write for Identifier {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let fits = if self.0.is_empty() {
                c.is_alphabetic() || c == '_'
            } else {
                c.is_alphanumeric() || c == '_'
            };
            if !fits || self.0.chars().count() == MAX_TYPE_CHARS {
                return Err(fmt::Error);
            }
            self.0.push(c);
        }
        Ok(())
    }
}
