//! The live event stream (TraceService.StreamEvents).

use std::time::Duration;

use tonic::codec::Streaming;

use crate::error::{bounded, Result};
use crate::pb;
use crate::pb::stream_events_response::Message;
use crate::Client;

/// A live event stream: replayed events (when opened with a cursor), one
/// `CaughtUp`, then live events; `Missed` says what a slow reader lost. One
/// read slowly, or held unread, keeps at most 2 MiB of events waiting in the
/// client (its HTTP/2 window), and holds up no other call of the client.
#[derive(Debug)]
pub struct EventStream {
    inner: Streaming<pb::StreamEventsResponse>,
}

impl Client {
    /// Opens an event stream: events matching `filter`, replayed from
    /// `after_sequence` (0: the oldest retained) then live; `None`: live only.
    pub async fn stream_events(
        &self,
        filter: pb::EventFilter,
        after_sequence: Option<u64>,
    ) -> Result<EventStream> {
        let mut trace = self.raw().trace;
        let req = pb::StreamEventsRequest {
            filter: Some(filter),
            after_sequence,
        };
        let inner = bounded("StreamEvents", self.call_timeout, async {
            Ok(trace.stream_events(req).await?.into_inner())
        })
        .await?;
        Ok(EventStream { inner })
    }
}

impl EventStream {
    /// The next message, waiting at most `timeout`; `None` when the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Message>> {
        bounded("waiting for an event", timeout, async {
            loop {
                match self.inner.message().await? {
                    None => return Ok(None),
                    Some(pb::StreamEventsResponse { message: Some(m) }) => return Ok(Some(m)),
                    Some(_) => continue,
                }
            }
        })
        .await
    }
}
