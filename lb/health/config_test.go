package health

import (
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	for _, tc := range []struct {
		in, want Config
	}{
		{Config{}, Config{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3}},
		{Config{Interval: 100 * time.Millisecond}, Config{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 3}},
		{Config{Interval: time.Minute, Rise: 1, Fall: 1}, Config{Interval: time.Minute, Timeout: time.Second, Rise: 1, Fall: 1}},
		{Config{Interval: 5 * time.Second, Timeout: 5 * time.Second}, Config{Interval: 5 * time.Second, Timeout: 5 * time.Second, Rise: 2, Fall: 3}},
	} {
		c, err := New(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		got := c.cfg
		if got.Interval != tc.want.Interval || got.Timeout != tc.want.Timeout || got.Rise != tc.want.Rise || got.Fall != tc.want.Fall {
			t.Errorf("New(%+v): config %+v, want %+v", tc.in, got, tc.want)
		}
		if got.Logger == nil {
			t.Error("nil logger")
		}
	}
}
