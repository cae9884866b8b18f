// Command goclient replays recorded gRPC requests against a server from a
// compiled client, alternating them with the echo baseline call by call
// (-block 1, the default) or in blocks of -block calls each, or, with
// -unpaired, timing all of the baseline's calls first and then all of the
// contender's, and prints the latencies of both as JSON. It knows no message
// types: requests are serialised protobuf bytes prepared by
// `python -m benchmarks.go_client`. Every response must have an OK status;
// with -expect-field, the contender's responses are also checked for a
// top-level varint field's value (LookupCacheResponse.hit), and those that
// differ are counted in "mismatches".
//
// Input file: a sequence of records, each a 4-byte little-endian length and
// that many bytes.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec passes bytes through: requests are already serialised.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "raw" }

// endpoint is one side of the pair: a connection, a method and its requests.
type endpoint struct {
	conn     *grpc.ClientConn
	method   string
	requests [][]byte
	next     int
	// expectField, when above 0, is a top-level varint field every response
	// should hold with the value expectValue (a missing field is 0).
	expectField protowire.Number
	expectValue uint64
	calls       int
	mismatches  int
}

func (e *endpoint) call(ctx context.Context, out *[]byte) (time.Duration, error) {
	request := e.requests[e.next]
	e.next = (e.next + 1) % len(e.requests)
	began := time.Now()
	err := e.conn.Invoke(ctx, e.method, &request, out, grpc.ForceCodec(rawCodec{}))
	elapsed := time.Since(began)
	if err == nil && e.expectField > 0 {
		e.calls++
		value, decodeErr := varintField(*out, e.expectField)
		if decodeErr != nil {
			return elapsed, decodeErr
		}
		if value != e.expectValue {
			e.mismatches++
		}
	}
	return elapsed, err
}

// varintField returns the last value of the top-level varint field number in
// a serialised message (0 when absent, as proto3 leaves a zero out).
func varintField(message []byte, number protowire.Number) (uint64, error) {
	var value uint64
	for len(message) > 0 {
		num, typ, n := protowire.ConsumeTag(message)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		message = message[n:]
		if num == number && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(message)
			if m < 0 {
				return 0, protowire.ParseError(m)
			}
			value, message = v, message[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, message)
		if m < 0 {
			return 0, protowire.ParseError(m)
		}
		message = message[m:]
	}
	return value, nil
}

func readRequests(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	var size [4]byte
	for {
		if _, err := io.ReadFull(f, size[:]); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
		record := make([]byte, binary.LittleEndian.Uint32(size[:]))
		if _, err := io.ReadFull(f, record); err != nil {
			return nil, err
		}
		out = append(out, record)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no request", path)
	}
	return out, nil
}

func open(target, method, path string) (*endpoint, error) {
	requests, err := readRequests(path)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &endpoint{conn: conn, method: method, requests: requests}, nil
}

type report struct {
	BaselineNs  []int64 `json:"baseline_ns"`
	ContenderNs []int64 `json:"contender_ns"`
	StoppedBy   string  `json:"stopped_by"`
	// Checked and Mismatches count the contender's responses checked with
	// -expect-field (warmup included) and those whose field differed.
	Checked    int `json:"checked"`
	Mismatches int `json:"mismatches"`
}

func main() {
	baseTarget := flag.String("baseline-target", "", "the echo server")
	baseMethod := flag.String("baseline-method", "/are.bench.v1.EchoService/Echo", "")
	baseFile := flag.String("baseline-requests", "", "the baseline's request file")
	target := flag.String("target", "", "the contender's server")
	method := flag.String("method", "", "the contender's full method name")
	file := flag.String("requests", "", "the contender's request file")
	count := flag.Int("n", 5000, "timed pairs")
	warmup := flag.Int("warmup", 500, "untimed pairs first")
	maxSeconds := flag.Float64("max-seconds", 30, "time bound of the warmup and of the timed loop, each")
	unpaired := flag.Bool("unpaired", false, "time the baseline alone first, then the contender alone")
	block := flag.Int("block", 1, "calls of each side per block when alternating (1: call by call)")
	rewarm := flag.Int("rewarm", 0, "untimed calls at the start of each block (with -block above 1)")
	gap := flag.Duration("gap", 0, "idle time before each block (with -block above 1)")
	expectField := flag.Int("expect-field", 0, "a top-level varint field each contender response must hold")
	expectValue := flag.Uint64("expect-value", 1, "the value -expect-field must have")
	flag.Parse()
	if *block < 1 {
		fmt.Fprintln(os.Stderr, "goclient: -block must be at least 1")
		os.Exit(2)
	}

	base, err := open(*baseTarget, *baseMethod, *baseFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient: baseline:", err)
		os.Exit(2)
	}
	contender, err := open(*target, *method, *file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient: contender:", err)
		os.Exit(2)
	}
	contender.expectField = protowire.Number(*expectField)
	contender.expectValue = *expectValue
	ctx := context.Background()
	var reply []byte
	// timed runs n calls of each endpoint given (alternating when both are:
	// call by call, or in blocks of -block calls, each after -gap idle and
	// -rewarm untimed calls), within maxSeconds, and returns their latencies
	// in the same order.
	timed := func(n int, warm bool, endpoints ...*endpoint) ([][]int64, string, error) {
		out := make([][]int64, len(endpoints))
		deadline := time.Now().Add(time.Duration(*maxSeconds * float64(time.Second)))
		size := 1
		if len(endpoints) > 1 {
			size = *block
		}
		for done := 0; done < n; {
			step := min(size, n-done)
			for j, e := range endpoints {
				if size > 1 && !warm {
					time.Sleep(*gap)
					for k := 0; k < *rewarm; k++ {
						if _, err := e.call(ctx, &reply); err != nil {
							return out, "", fmt.Errorf("%s: %w", e.method, err)
						}
					}
				}
				for k := 0; k < step; k++ {
					if time.Now().After(deadline) {
						return out, "time", nil
					}
					d, err := e.call(ctx, &reply)
					if err != nil {
						return out, "", fmt.Errorf("%s: %w", e.method, err)
					}
					out[j] = append(out[j], d.Nanoseconds())
				}
			}
			done += step
		}
		return out, "count", nil
	}
	run := func(endpoints ...*endpoint) ([][]int64, string) {
		if _, _, err := timed(*warmup, true, endpoints...); err != nil {
			fmt.Fprintln(os.Stderr, "goclient: warmup:", err)
			os.Exit(1)
		}
		latencies, stoppedBy, err := timed(*count, false, endpoints...)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(1)
		}
		return latencies, stoppedBy
	}
	var r report
	if *unpaired {
		b, stoppedBase := run(base)
		c, stoppedOwn := run(contender)
		r = report{BaselineNs: b[0], ContenderNs: c[0], StoppedBy: stoppedOwn}
		if stoppedBase == "time" {
			r.StoppedBy = "time"
		}
	} else {
		both, stoppedBy := run(base, contender)
		r = report{BaselineNs: both[0], ContenderNs: both[1], StoppedBy: stoppedBy}
	}
	r.Checked, r.Mismatches = contender.calls, contender.mismatches
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(1)
	}
}

func init() { encoding.RegisterCodec(rawCodec{}) }
