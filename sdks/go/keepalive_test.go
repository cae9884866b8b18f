package are

import (
	"testing"
	"time"

	"google.golang.org/grpc/keepalive"
)

// The keepalive options become the connection's keepalive parameters: the
// defaults, a custom pair, a default timeout, and off.
func TestKeepaliveParameters(t *testing.T) {
	cases := []struct {
		name string
		opts []Option
		want keepalive.ClientParameters
		on   bool
	}{
		{"default", nil, keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}, true},
		{"custom", []Option{WithKeepalive(15*time.Second, 5*time.Second)}, keepalive.ClientParameters{Time: 15 * time.Second, Timeout: 5 * time.Second}, true},
		{"default timeout", []Option{WithKeepalive(20*time.Second, 0)}, keepalive.ClientParameters{Time: 20 * time.Second, Timeout: DefaultKeepaliveTimeout}, true},
		{"off", []Option{WithKeepalive(0, 0)}, keepalive.ClientParameters{}, false},
	}
	for _, c := range cases {
		o := defaultOptions()
		for _, opt := range c.opts {
			opt(&o)
		}
		got, on := o.keepalive()
		if got != c.want || on != c.on {
			t.Errorf("%s: keepalive() = %+v, %v; want %+v, %v", c.name, got, on, c.want, c.on)
		}
		if got.PermitWithoutStream {
			t.Errorf("%s: PermitWithoutStream is set; pings must stop while no call is open", c.name)
		}
	}
}
