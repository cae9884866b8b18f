package dev.are.sdk;

import dev.are.sdk.v1.Event;
import java.util.List;

/**
 * One page of retained events ({@link Client#listEvents}), ascending by sequence.
 *
 * @param events the events of this page
 * @param nextPageToken the token of the next page; empty when no retained event matches beyond this
 *     page (new ones may still come: follow live with {@link Client#streamEvents} from {@code
 *     lastSequence})
 * @param lastSequence the cursor after this page: the sequence up to which the log was scanned (at
 *     least the last event's), to pass as {@code afterSequence} to a later listing or stream
 * @param oldestRetainedSequence the oldest sequence still retained; above {@code afterSequence +
 *     1}, older events were dropped by retention
 */
public record EventPage(
    List<Event> events, String nextPageToken, long lastSequence, long oldestRetainedSequence) {}
