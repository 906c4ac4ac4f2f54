"""Device drivers: I/O only, bytes in, typed readings out. Never imports the daemon."""
