package are

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

// A failure's message cut by bytes used to split a character, or keep an
// error's invalid bytes: proto.Marshal then refuses the string field, and the
// failure could never be sent (the attempt stayed held until it timed out).
func TestAFailureOfAnyErrorTextCanBeSent(t *testing.T) {
	for name, text := range map[string]string{
		"cut inside a character": strings.Repeat("é", maxFailureMessage), // 2 bytes each
		"invalid bytes":          "bad \xff\xfe bytes",
	} {
		failure, _ := failureOf(errors.New(text))
		if !utf8.ValidString(failure.GetMessage()) || len(failure.GetMessage()) > maxFailureMessage {
			t.Fatalf("%s: message of %d bytes, valid UTF-8 %v", name, len(failure.GetMessage()), utf8.ValidString(failure.GetMessage()))
		}
		if _, err := proto.Marshal(failure); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if got := truncate(strings.Repeat("é", 3), 5); got != "éé" {
		t.Fatalf("truncate kept %q", got)
	}
}
