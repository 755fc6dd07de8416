"""The long-running processes: the consumer (claim, send, settle, ack), the supervisor of the
consumer processes, the policy that turns an outcome into a queue action, and the consumer's
wake-ups and memory settings. It drives the pipeline, the sink and the queue; it never imports
the source (the watcher and the consumer share only the queue file)."""
