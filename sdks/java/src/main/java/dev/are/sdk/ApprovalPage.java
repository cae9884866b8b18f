package dev.are.sdk;

import dev.are.sdk.v1.Task;
import java.util.List;

/**
 * One page of open approval gates ({@link Client#listApprovals}).
 *
 * @param tasks the tasks in AWAITING_APPROVAL, with their inputs (so a human can judge them),
 *     oldest request first; {@code getApproval().getRequestTime()} says when each gate opened
 * @param nextPageToken the token of the next page; empty on the last page
 */
public record ApprovalPage(List<Task> tasks, String nextPageToken) {}
