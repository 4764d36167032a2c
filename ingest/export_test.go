package ingest

// Live reports whether the serve loop takes the consumer for about caught
// up (its rounds then run back to back).
func (c *Consumer) Live() bool { return c.srv != nil && c.srv.caughtUp() }

// OwnedPartitions is how many partitions of the topic the consumer owns.
func (c *Consumer) OwnedPartitions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.parts)
}
