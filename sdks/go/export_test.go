package are

// FlightWaiters is how many GetOrCall callers of c wait now for the shared
// call of (namespace, prompt, opts): 0 when none is under way. For tests:
// they start concurrent callers and need to know when all have joined.
func FlightWaiters(c *Cache, namespace, prompt string, opts ...CacheOption) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[flightKeyOf(namespace, prompt, collect(opts))]; f != nil {
		return f.waiters
	}
	return 0
}
