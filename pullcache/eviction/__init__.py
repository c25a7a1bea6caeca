"""What leaves the store: LRU bound, garbage-collection sweep, index/disk reconcile."""
