package are

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// JSONContentType is the content type of JSON payloads; the contract reads
// an empty content type as JSON too.
const JSONContentType = "application/json"

// MaxInlineBytes is the most a payload carries inline (4 MiB); larger
// content travels as a blob.
const MaxInlineBytes = 4 * 1024 * 1024

const blobChunkBytes = 1024 * 1024

// JSON encodes v as a JSON payload.
func JSON(v any) (*arev1.Payload, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("are: payload is not JSON-serialisable: %w", err)
	}
	return &arev1.Payload{Content: &arev1.Payload_Data{Data: data}, ContentType: JSONContentType}, nil
}

// Bytes makes an inline payload of data with a content type ("" means JSON).
func Bytes(data []byte, contentType string) *arev1.Payload {
	return &arev1.Payload{Content: &arev1.Payload_Data{Data: data}, ContentType: contentType}
}

// IsJSON reports whether a content type is JSON: "" (the contract's
// default), application/json, or a +json type.
func IsJSON(contentType string) bool {
	base := strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
	return base == "" || base == JSONContentType || strings.HasSuffix(base, "+json")
}

// PayloadBytes returns a payload's content: its inline data, or the bytes of
// the blob it references, read from the sidecar's blob store. A nil or unset
// payload is nil.
func (c *Client) PayloadBytes(ctx context.Context, p *arev1.Payload) ([]byte, error) {
	if p == nil {
		return nil, nil
	}
	if blob := p.GetBlob(); blob != nil {
		return c.GetBlob(ctx, blob.GetSha256())
	}
	return p.GetData(), nil
}

// GetBlob reads a whole blob from the blob store (StateService.GetBlob).
func (c *Client) GetBlob(ctx context.Context, sha256Hex string) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Raw.State.GetBlob(ctx, &arev1.GetBlobRequest{Sha256: sha256Hex})
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
		if ref := msg.GetBlob(); ref != nil && out.Len() == 0 && ref.GetSizeBytes() > 0 && ref.GetSizeBytes() <= 256<<20 {
			out.Grow(int(ref.GetSizeBytes()))
		}
		out.Write(msg.GetChunk())
	}
}

// PutBlob stores data in the blob store (StateService.PutBlob) and returns
// its reference. A non-empty workflowID makes the workflow own the blob (it
// is kept as long as the workflow).
func (c *Client) PutBlob(ctx context.Context, data []byte, contentType, workflowID string) (*arev1.BlobRef, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Raw.State.PutBlob(ctx)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(data)
	header := &arev1.BlobHeader{
		ContentType: contentType,
		SizeBytes:   int64(len(data)),
		Sha256:      hex.EncodeToString(digest[:]),
		WorkflowId:  workflowID,
	}
	send := func(req *arev1.PutBlobRequest) error {
		if err := stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}
	if err := send(&arev1.PutBlobRequest{Message: &arev1.PutBlobRequest_Header{Header: header}}); err != nil {
		return nil, err
	}
	for start := 0; start < len(data); start += blobChunkBytes {
		end := min(start+blobChunkBytes, len(data))
		if err := send(&arev1.PutBlobRequest{Message: &arev1.PutBlobRequest_Chunk{Chunk: data[start:end]}}); err != nil {
			return nil, err
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return resp.GetBlob(), nil
}

// inlineOrBlob returns an inline payload, or for content over MaxInlineBytes
// a reference to a blob owned by workflowID.
func (c *Client) inlineOrBlob(ctx context.Context, data []byte, contentType, workflowID string) (*arev1.Payload, error) {
	if len(data) <= MaxInlineBytes {
		return Bytes(data, contentType), nil
	}
	ref, err := c.PutBlob(ctx, data, contentType, workflowID)
	if err != nil {
		return nil, err
	}
	return &arev1.Payload{Content: &arev1.Payload_Blob{Blob: ref}, ContentType: contentType}, nil
}
