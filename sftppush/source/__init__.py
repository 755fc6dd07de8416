"""Where entries come from: the inotify watcher, its watches, the full-tree scans and the
upkeep (purge, rescue) that run beside it. It appends to the queue; it never uploads, and it
never imports the runtime."""
