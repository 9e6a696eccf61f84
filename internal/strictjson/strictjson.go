// Package strictjson walks JSON objects and arrays member by member, for
// decoders of untrusted input that must reject what encoding/json accepts
// silently: duplicate member names and data after the value.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Members parses data as one JSON object and calls fn for each member in
// order with the member's raw value. It rejects duplicate names and data
// after the object; an error from fn stops the walk and is returned.
func Members(data []byte, fn func(name string, raw json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := expectDelim(dec, '{', "object"); err != nil {
		return err
	}
	seen := make(map[string]struct{})
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name, ok := tok.(string)
		if !ok {
			return errors.New("expected a member name")
		}
		if _, dup := seen[name]; dup {
			return fmt.Errorf("duplicate member %q", name)
		}
		seen[name] = struct{}{}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := fn(name, raw); err != nil {
			return err
		}
	}
	return expectEnd(dec)
}

// Elements parses data as one JSON array and calls fn for each element in
// order. It rejects data after the array; an error from fn stops the walk
// and is returned.
func Elements(data []byte, fn func(raw json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := expectDelim(dec, '[', "array"); err != nil {
		return err
	}
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := fn(raw); err != nil {
			return err
		}
	}
	return expectEnd(dec)
}

func expectDelim(dec *json.Decoder, want json.Delim, what string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("expected a JSON %s", what)
	}
	return nil
}

// expectEnd consumes the closing delimiter and checks that nothing follows.
func expectEnd(dec *json.Decoder) error {
	if _, err := dec.Token(); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}
