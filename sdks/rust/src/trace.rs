//! The flight recorder (TraceService): pages of retained events
//! ([`Client::list_events`]) and the live event stream
//! ([`Client::stream_events`]).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tonic::codec::Streaming;
use tonic::Code;

use crate::error::{bounded, Error, Result};
use crate::pb;
use crate::pb::stream_events_response::Message;
use crate::Client;

/// The largest page ListEvents returns.
const MAX_PAGE_SIZE: usize = 1000;

/// How many of the last sequences a stream remembers, to return an event
/// that arrives twice (live and through a fill) once; as the Python and Go
/// SDKs.
const RECENT: usize = 16_384;

/// The `max_batch` of every stream, as the Python SDK's: the sidecar sends
/// the events it already has ready (a replay, a burst) up to this many in
/// one message, which costs it far less than one message each (it runs the
/// scheduler on the same event loop), and the stream returns them one by
/// one.
const STREAM_BATCH: u32 = 256;

/// The largest message a batch makes (the sidecar's bound: 4 MiB, gRPC's
/// default receive limit). A client that takes less
/// ([`crate::Options::max_message_bytes`]) does not ask for batches, which
/// it could not receive: its events come one per message, as before.
const STREAM_BATCH_BYTES: usize = 4 << 20;

/// One page of retained events, ascending by sequence.
#[derive(Clone, Debug)]
pub struct EventPage {
    /// The events of this page.
    pub events: Vec<pb::Event>,
    /// The token of the next page; empty when no retained event matches
    /// beyond this page (new ones may still come: follow them with
    /// [`Client::stream_events`] from `last_sequence`).
    pub next_page_token: String,
    /// The cursor after this page: the sequence up to which the log was
    /// scanned (at least the last event's), to pass as `after_sequence` to
    /// [`Client::stream_events`] or a later [`Client::list_events`].
    pub last_sequence: u64,
    /// The oldest sequence still retained; above `after_sequence + 1`,
    /// older events were dropped by retention.
    pub oldest_retained_sequence: u64,
}

impl From<pb::ListEventsResponse> for EventPage {
    fn from(resp: pb::ListEventsResponse) -> Self {
        EventPage {
            events: resp.events,
            next_page_token: resp.next_page_token,
            last_sequence: resp.last_sequence,
            oldest_retained_sequence: resp.oldest_retained_sequence,
        }
    }
}

/// A live event stream: replayed events (when opened with a cursor), one
/// `CaughtUp`, then live events. Events the sidecar has ready together come
/// in one message (up to 256 of them, a `StreamedEventBatch`) and are
/// returned one by one, as `Message::Event`s, in order, as if each had come
/// alone: the stream never returns `Message::Batch`, and the sequence of the
/// last event returned is the cursor to resume from, as before. One read
/// slowly, or held unread, keeps at most about 6 MiB of events waiting in
/// the client (its HTTP/2 window, 2 MiB, and the rest of one batch, at most
/// 4 MiB), and holds up no other call of the client.
///
/// The sidecar buffers a bounded number of events per stream (10,000 by
/// default); a stream read too slowly is sent an `EventsMissed` notice,
/// reason `SLOW_SUBSCRIBER`, instead of the events that overflowed. By
/// default the stream does not return that notice: it fetches the missed
/// events with ListEvents (from the notice's `resume_after_sequence` up to
/// its `last_missed_sequence`, pages of up to 1,000, fewer while a page of
/// large events is past the message bound) and returns them in its place,
/// in order, each event once. [`EventStream::fill_missed`]`(false)` returns
/// the notices instead. A `RETENTION` notice (the events are gone) is always
/// returned.
#[derive(Debug)]
pub struct EventStream {
    inner: Streaming<pb::StreamEventsResponse>,
    client: Client,
    filter: pb::EventFilter,
    fill_missed: bool,
    /// Events received or fetched and not yet returned, ascending: the rest
    /// of a batch, or missed events fetched with ListEvents.
    pending: VecDeque<pb::Event>,
    /// The fill under way: the next page to fetch.
    fill: Option<Fill>,
    seen: Recent,
    /// What came that the API does not show (tests check it).
    #[cfg(test)]
    received: Received,
}

/// Messages of a stream that the API does not show: batches, and the
/// slow-subscriber notices filled in.
#[cfg(test)]
#[derive(Debug, Default)]
struct Received {
    batches: usize,
    fills: usize,
}

impl Client {
    /// One page of the retained events matching `filter`, ascending by
    /// sequence (ListEvents): those after `after_sequence` (0: from the
    /// oldest retained) for the first page, then `page_token` (the previous
    /// page's `next_page_token`; "" for the first page) picks up where it
    /// left. `page_size` 0 is 100, at most 1,000. Bounded by the call
    /// timeout.
    ///
    /// Errors: INVALID_ARGUMENT naming the field (a bad filter or page
    /// size), reason `INVALID_PAGE_TOKEN` for a bad token; OUT_OF_RANGE,
    /// reason `SEQUENCE_BEYOND_LOG`, for a cursor beyond the end of the log
    /// (from another data folder).
    pub async fn list_events(
        &self,
        filter: &pb::EventFilter,
        after_sequence: u64,
        page_size: i32,
        page_token: &str,
    ) -> Result<EventPage> {
        let req = pb::ListEventsRequest {
            filter: Some(filter.clone()),
            after_sequence,
            page_size,
            page_token: page_token.to_string(),
        };
        Ok(self.list_events_request(req).await?.into())
    }

    async fn list_events_request(
        &self,
        req: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse> {
        let mut trace = self.raw().trace;
        self.unary("ListEvents", trace.list_events(req)).await
    }

    /// At most `limit` retained events matching `filter` after
    /// `after_sequence`, ascending, fetched page by page (each call bounded
    /// by the call timeout).
    pub async fn events(
        &self,
        filter: &pb::EventFilter,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<pb::Event>> {
        let mut out = Vec::new();
        let mut token = String::new();
        while out.len() < limit {
            let size = (limit - out.len()).min(MAX_PAGE_SIZE) as i32;
            let page = self
                .list_events(filter, after_sequence, size, &token)
                .await?;
            out.extend(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Opens an event stream: events matching `filter`, replayed from
    /// `after_sequence` (0: the oldest retained) then live; `None`: live only.
    /// Missed events are filled in, and events that come batched are
    /// returned one by one (see [`EventStream`]).
    pub async fn stream_events(
        &self,
        filter: pb::EventFilter,
        after_sequence: Option<u64>,
    ) -> Result<EventStream> {
        let mut trace = self.raw().trace;
        let req = pb::StreamEventsRequest {
            filter: Some(filter.clone()),
            after_sequence,
            max_batch: if self.max_message_bytes >= STREAM_BATCH_BYTES {
                STREAM_BATCH
            } else {
                0 // one event per message
            },
        };
        let inner = bounded("StreamEvents", self.call_timeout, async {
            Ok(trace.stream_events(req).await?.into_inner())
        })
        .await?;
        Ok(EventStream {
            inner,
            client: self.clone(),
            filter,
            fill_missed: true,
            pending: VecDeque::new(),
            fill: None,
            seen: Recent::default(),
            #[cfg(test)]
            received: Received::default(),
        })
    }
}

impl EventStream {
    /// Whether a slow-subscriber notice is replaced by the events it missed,
    /// fetched with ListEvents (`true`, the default), or returned as it is
    /// (`false`: the caller fetches them, or not).
    pub fn fill_missed(mut self, fill: bool) -> Self {
        self.fill_missed = fill;
        self
    }

    /// The next message, waiting at most `timeout`; `None` when the stream
    /// ended. Filling missed events takes ListEvents calls, each also bounded
    /// by the call timeout; an error of one is returned, and the next call
    /// tries it again (nothing is lost when `timeout` runs out meanwhile).
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Message>> {
        bounded("waiting for an event", timeout, self.next_message()).await
    }

    /// The next message. Cancel-safe: the stream's state changes only once
    /// a message or a page has arrived.
    async fn next_message(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if self.seen.add(event.sequence) {
                    return Ok(Some(Message::Event(event)));
                }
                continue;
            }
            if let Some(fill) = &self.fill {
                let page = match self.client.list_events_request(fill.request.clone()).await {
                    Ok(page) => page,
                    Err(e) if too_large(&e) && fill.request.page_size > 1 => {
                        // Large events: a page of them went past the
                        // message bound; fetch fewer at a time.
                        if let Some(fill) = &mut self.fill {
                            fill.request.page_size /= 2;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if let Some(fill) = self.fill.take() {
                    self.fill = fill.take(page, &mut self.pending);
                }
                continue;
            }
            let message = match self.inner.message().await? {
                None => return Ok(None),
                Some(pb::StreamEventsResponse { message: Some(m) }) => m,
                Some(_) => continue,
            };
            match message {
                Message::Event(event) => {
                    if self.seen.add(event.sequence) {
                        return Ok(Some(Message::Event(event)));
                    }
                }
                Message::Batch(batch) => {
                    // Consecutive events, in order, with no notice among
                    // them: returned from `pending` before the next message
                    // is read, each as if it had come alone.
                    #[cfg(test)]
                    {
                        self.received.batches += 1;
                    }
                    self.pending.extend(batch.events);
                }
                Message::Missed(missed)
                    if self.fill_missed
                        && missed.reason == pb::MissedReason::SlowSubscriber as i32 =>
                {
                    #[cfg(test)]
                    {
                        self.received.fills += 1;
                    }
                    self.fill = Some(Fill::of(&self.filter, &missed));
                }
                other => return Ok(Some(other)),
            }
        }
    }
}

/// Whether a call failed for a message past the bound of either side
/// (gRPC's own status, without a reason: RESOURCE_EXHAUSTED from the
/// sidecar, OUT_OF_RANGE from tonic).
fn too_large(e: &Error) -> bool {
    e.reason.is_empty() && matches!(e.code, Code::ResourceExhausted | Code::OutOfRange)
}

/// A fill under way: the ListEvents request of its next page, and the last
/// sequence it fetches.
#[derive(Debug)]
struct Fill {
    request: pb::ListEventsRequest,
    last: u64,
}

impl Fill {
    fn of(filter: &pb::EventFilter, missed: &pb::EventsMissed) -> Fill {
        Fill {
            request: pb::ListEventsRequest {
                filter: Some(filter.clone()),
                after_sequence: missed.resume_after_sequence,
                page_size: MAX_PAGE_SIZE as i32,
                page_token: String::new(),
            },
            last: missed.last_missed_sequence,
        }
    }

    /// Adds a fetched page's events up to the last missed one to `pending`;
    /// the fill of the next page, or `None` when this one was the last.
    fn take(
        mut self,
        page: pb::ListEventsResponse,
        pending: &mut VecDeque<pb::Event>,
    ) -> Option<Fill> {
        for event in page.events {
            if event.sequence > self.last {
                return None;
            }
            pending.push_back(event);
        }
        if page.next_page_token.is_empty() || page.last_sequence >= self.last {
            return None;
        }
        self.request.page_token = page.next_page_token;
        Some(self)
    }
}

/// The last [`RECENT`] sequences returned.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Recent {
    /// Notes `sequence`; false when it was returned already.
    fn add(&mut self, sequence: u64) -> bool {
        if !self.set.insert(sequence) {
            return false;
        }
        self.order.push_back(sequence);
        if self.order.len() > RECENT {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod batches;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64) -> pb::Event {
        pb::Event {
            sequence,
            ..Default::default()
        }
    }

    fn page(sequences: &[u64], token: &str, last_sequence: u64) -> pb::ListEventsResponse {
        pb::ListEventsResponse {
            events: sequences.iter().copied().map(event).collect(),
            next_page_token: token.to_string(),
            last_sequence,
            oldest_retained_sequence: 1,
            end_sequence: last_sequence,
        }
    }

    fn sequences(pending: &VecDeque<pb::Event>) -> Vec<u64> {
        pending.iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn a_fill_pages_up_to_the_last_missed_sequence() {
        let missed = pb::EventsMissed {
            reason: pb::MissedReason::SlowSubscriber as i32,
            missed_count: 5,
            first_missed_sequence: 11,
            last_missed_sequence: 20,
            resume_after_sequence: 10,
        };
        let fill = Fill::of(&pb::EventFilter::default(), &missed);
        assert_eq!(fill.request.after_sequence, 10);
        let mut pending = VecDeque::new();
        let fill = fill
            .take(page(&[11, 12], "t1", 12), &mut pending)
            .expect("more to fetch");
        assert_eq!(fill.request.page_token, "t1");
        // Events past the last missed one are the stream's own: not taken.
        assert!(fill
            .take(page(&[15, 20, 21, 22], "t2", 22), &mut pending)
            .is_none());
        assert_eq!(sequences(&pending), [11, 12, 15, 20]);
    }

    #[test]
    fn a_fill_ends_at_the_last_page_or_past_the_last_sequence() {
        let missed = pb::EventsMissed {
            resume_after_sequence: 0,
            last_missed_sequence: 9,
            ..Default::default()
        };
        let mut pending = VecDeque::new();
        let fill = Fill::of(&pb::EventFilter::default(), &missed);
        assert!(fill.take(page(&[3], "", 5), &mut pending).is_none());
        let fill = Fill::of(&pb::EventFilter::default(), &missed);
        assert!(fill.take(page(&[], "more", 9), &mut pending).is_none());
        assert_eq!(sequences(&pending), [3]);
    }

    #[test]
    fn recent_drops_repeats_and_forgets_the_oldest() {
        let mut recent = Recent::default();
        assert!(recent.add(1));
        assert!(!recent.add(1));
        for s in 2..=(RECENT as u64 + 1) {
            assert!(recent.add(s));
        }
        assert_eq!(recent.order.len(), RECENT);
        assert!(recent.add(1), "1 was forgotten");
        assert!(!recent.add(RECENT as u64 + 1));
    }
}
