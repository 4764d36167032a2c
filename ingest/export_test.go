package ingest

// Live reports whether the serve loop takes the consumer for about caught
// up (its rounds then run back to back).
func (c *Consumer) Live() bool { return c.srv != nil && c.srv.live() }
