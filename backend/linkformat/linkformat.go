// Package linkformat parses and formats CoRE Link Format documents
// (RFC 6690, content format 40), as LwM2M devices send them in Register and
// Update requests and in Discover responses.
//
// The parser is strict about structure (every link is a <URI> followed by
// ;name or ;name=value parameters, links separated by commas) and lenient
// about white space around separators, which real clients emit. It never
// panics on input.
package linkformat

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Link is one entry of a link-format document.
type Link struct {
	// URL is the target between the angle brackets, for example "/3/0".
	URL string `json:"url"`
	// Attrs maps parameter names to their values. A parameter without a
	// value (";obs") maps to the empty string. Quoted values are unquoted.
	Attrs map[string]string `json:"at"`
}

// Limits of a document the parser accepts.
const (
	MaxLinks      = 1024
	MaxAttrs      = 32
	maxNameLength = 64
)

// Errors returned by Parse, wrapped with the position of the fault.
var (
	ErrSyntax   = errors.New("link-format syntax error")
	ErrTooLarge = errors.New("link-format document too large")
)

// Parse parses a CoRE link-format document. An empty (or all white space)
// document yields no links and no error.
func Parse(doc string) ([]Link, error) {
	p := parser{s: doc}
	p.skipSpace()
	if p.eof() {
		return nil, nil
	}
	var links []Link
	for {
		if len(links) == MaxLinks {
			return nil, fmt.Errorf("%w: more than %d links", ErrTooLarge, MaxLinks)
		}
		l, err := p.link()
		if err != nil {
			return nil, err
		}
		links = append(links, l)
		p.skipSpace()
		if p.eof() {
			return links, nil
		}
		if p.s[p.i] != ',' {
			return nil, p.errf("expected ',' between links")
		}
		p.i++
		p.skipSpace()
	}
}

type parser struct {
	s string
	i int
}

func (p *parser) eof() bool { return p.i >= len(p.s) }

func (p *parser) errf(msg string) error {
	return fmt.Errorf("%w at offset %d: %s", ErrSyntax, p.i, msg)
}

func (p *parser) skipSpace() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\r', '\n':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) link() (Link, error) {
	if p.eof() || p.s[p.i] != '<' {
		return Link{}, p.errf("expected '<'")
	}
	end := strings.IndexByte(p.s[p.i+1:], '>')
	if end < 0 {
		return Link{}, p.errf("unterminated '<'")
	}
	url := p.s[p.i+1 : p.i+1+end]
	if url == "" {
		return Link{}, p.errf("empty link target")
	}
	for j := 0; j < len(url); j++ {
		if c := url[j]; c <= ' ' || c == '<' || c == '"' || c >= 0x7f {
			return Link{}, p.errf("invalid character in link target")
		}
	}
	p.i += end + 2
	l := Link{URL: url, Attrs: map[string]string{}}
	for {
		p.skipSpace()
		if p.eof() || p.s[p.i] != ';' {
			return l, nil
		}
		p.i++
		p.skipSpace()
		name, err := p.name()
		if err != nil {
			return Link{}, err
		}
		if _, dup := l.Attrs[name]; dup {
			return Link{}, p.errf("duplicate parameter " + name)
		}
		if len(l.Attrs) == MaxAttrs {
			return Link{}, fmt.Errorf("%w: more than %d parameters in a link", ErrTooLarge, MaxAttrs)
		}
		p.skipSpace()
		value := ""
		if !p.eof() && p.s[p.i] == '=' {
			p.i++
			p.skipSpace()
			if value, err = p.value(); err != nil {
				return Link{}, err
			}
		}
		l.Attrs[name] = value
	}
}

// name reads a parmname (RFC 5988: 1*( ALPHA / DIGIT / "!" / "#" / "$" /
// "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" ), plus "*").
func (p *parser) name() (string, error) {
	start := p.i
	for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
		p.i++
	}
	if p.i == start {
		return "", p.errf("expected parameter name")
	}
	if p.i-start > maxNameLength {
		return "", p.errf("parameter name too long")
	}
	return p.s[start:p.i], nil
}

func (p *parser) value() (string, error) {
	if p.eof() {
		return "", p.errf("expected parameter value")
	}
	if p.s[p.i] != '"' {
		start := p.i
		for p.i < len(p.s) && isValueChar(p.s[p.i]) {
			p.i++
		}
		if p.i == start {
			return "", p.errf("expected parameter value")
		}
		return p.s[start:p.i], nil
	}
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch c {
		case '"':
			p.i++
			return b.String(), nil
		case '\\':
			if p.i+1 >= len(p.s) {
				return "", p.errf("unterminated escape")
			}
			b.WriteByte(p.s[p.i+1])
			p.i += 2
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return "", p.errf("unterminated quoted string")
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$&+-.^_`|~*", c) >= 0
}

// isValueChar accepts a ptoken (RFC 6690) and a little more that real
// clients put in unquoted values (for example "ver=1.1", "ct=11543", "/").
func isValueChar(c byte) bool {
	if isTokenChar(c) {
		return true
	}
	return strings.IndexByte("%'()/:?@[]{}", c) >= 0
}

// Format writes links as a link-format document. Parameters are written in
// name order; values that are not plain tokens are quoted.
func Format(links []Link) string {
	var b strings.Builder
	for i, l := range links {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('<')
		b.WriteString(l.URL)
		b.WriteByte('>')
		names := make([]string, 0, len(l.Attrs))
		for n := range l.Attrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			b.WriteByte(';')
			b.WriteString(n)
			v := l.Attrs[n]
			if v == "" {
				continue
			}
			b.WriteByte('=')
			if needsQuote(v) {
				b.WriteByte('"')
				for j := 0; j < len(v); j++ {
					if v[j] == '"' || v[j] == '\\' {
						b.WriteByte('\\')
					}
					b.WriteByte(v[j])
				}
				b.WriteByte('"')
			} else {
				b.WriteString(v)
			}
		}
	}
	return b.String()
}

func needsQuote(v string) bool {
	for i := 0; i < len(v); i++ {
		if !isValueChar(v[i]) {
			return true
		}
	}
	return false
}
