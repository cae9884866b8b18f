package dev.are.sdk;

/**
 * Runs one attempt of a task. Its return value, written as JSON, is the task's output (null: no
 * output); an exception fails the attempt, retried by the task's policy ({@link TaskError} says
 * how precisely).
 */
@FunctionalInterface
public interface TaskHandler {
  /** Handles one attempt; should stop soon after {@link TaskContext#isCancelled()} turns true. */
  Object handle(TaskContext task) throws Exception;
}
