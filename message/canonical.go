package message

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// Canonical returns the JSON value b holds in canonical form, the one form
// every writer of a start request gives it:
//
//   - object members sorted by key, comparing the decoded keys byte by byte
//     (the order in which encoding/json writes a map[string]any);
//   - no insignificant space;
//   - numbers exactly as written (1.0 stays 1.0, 1e3 stays 1e3, -0 stays
//     -0, a 30-digit integer keeps its digits): they are copied, never
//     converted to float64;
//   - strings decoded and encoded again as encoding/json encodes them with
//     HTML escaping off (json.Encoder.SetEscapeHTML(false)): "\u00e9" and
//     "é" are both é, "\/" is /, control characters are \n, \t, … or
//     \u00XX, and U+2028 and U+2029 are \u2028 and \u2029.
//
// Two documents that hold the same JSON value give the same bytes. The
// engine hashes this form (SHA-256) to tell a duplicate start request,
// which it drops, from a conflicting one, which it dead-letters (reason
// conflicting-start); so package client, the HTTP API and the outboxes all
// write start requests in it, and a retry through any of them of a start
// made through another is the same start.
//
// Canonical fixes nothing silently: it returns an error, and no bytes, for
// input that is not exactly one JSON value (invalid syntax, an empty input,
// data after the value), that is not valid UTF-8 anywhere, that escapes a
// lone UTF-16 surrogate ("\ud800", which encoding/json would decode as
// U+FFFD), that nests arrays and objects deeper than 10000, or that has an
// object with a key twice (a *DuplicateKeyError). Syntax errors give the
// input's byte offset.
//
// Canonical is safe for concurrent use. It makes one allocation, the
// returned slice, in the common case (see BenchmarkCanonical).
func Canonical(b []byte) ([]byte, error) {
	c := canonPool.Get().(*canon)
	defer c.release()
	c.in = b
	c.out = make([]byte, 0, len(b))
	i, err := c.value(0, 0)
	if err != nil {
		return nil, err
	}
	if i = skipSpace(b, i); i < len(b) {
		return nil, fmt.Errorf("data after the JSON value at offset %d", i)
	}
	return c.out, nil
}

// DuplicateKeyError is Canonical's error for an object that has a key
// twice. encoding/json would keep the last value; JavaScript and others the
// first; the start request's data would depend on the reader, so Canonical
// refuses it.
type DuplicateKeyError struct {
	// Key is the key, decoded.
	Key string
	// Offset is the byte offset in the input of the key's second
	// occurrence.
	Offset int
}

func (e *DuplicateKeyError) Error() string {
	return fmt.Sprintf("duplicate key %q in a JSON object at offset %d", e.Key, e.Offset)
}

// canonMaxDepth bounds the nesting of arrays and objects, as encoding/json
// does, so that a hostile document cannot exhaust the stack.
const canonMaxDepth = 10000

// canon is the state of one Canonical call. It is pooled: its scratch
// slices are reused from call to call.
type canon struct {
	in  []byte
	out []byte
	// members holds the members of the objects being written, innermost
	// last: an object's members are members[base:], where base was the
	// length when it began.
	members []member
	// keys holds the decoded keys of members whose encoded key differs
	// from the decoded one (it has an escape).
	keys []byte
	// scratch is where an object's members wait while they are written
	// back in order.
	scratch []byte
}

// member is an object member already written to out: out[start:keyEnd] is
// its encoded key with quotes, out[keyEnd:end] the colon and the value.
type member struct {
	start, keyEnd, end int
	// in is the offset of the key in the input, for errors.
	in int
	// esc is set when the key's decoded bytes are keys[k0:k1] rather than
	// the encoded key without its quotes.
	esc    bool
	k0, k1 int
}

var canonPool = sync.Pool{New: func() any { return new(canon) }}

// release returns c to the pool, without buffers that one large document
// grew (they would be kept for ever otherwise).
func (c *canon) release() {
	c.in, c.out = nil, nil
	c.members, c.keys, c.scratch = c.members[:0], c.keys[:0], c.scratch[:0]
	if cap(c.scratch) > 64<<10 {
		c.scratch = nil
	}
	if cap(c.keys) > 64<<10 {
		c.keys = nil
	}
	if cap(c.members) > 4096 {
		c.members = nil
	}
	canonPool.Put(c)
}

// key returns m's decoded key.
func (c *canon) key(m *member) []byte {
	if m.esc {
		return c.keys[m.k0:m.k1]
	}
	return c.out[m.start+1 : m.keyEnd-1]
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

var errEOF = errors.New("unexpected end of JSON input")

// unexpected describes the byte at i of the input, which is not what the
// grammar allows there (want says what it allows).
func (c *canon) unexpected(i int, want string) error {
	if i >= len(c.in) {
		return errEOF
	}
	ch := c.in[i]
	if ch < 0x20 || ch >= utf8.RuneSelf {
		return fmt.Errorf("invalid byte 0x%02x at offset %d, want %s", ch, i, want)
	}
	return fmt.Errorf("invalid character %q at offset %d, want %s", ch, i, want)
}

// value writes the value that starts at or after i (after space) and
// returns the offset after it. depth counts the arrays and objects around
// it.
func (c *canon) value(i, depth int) (int, error) {
	i = skipSpace(c.in, i)
	if i >= len(c.in) {
		return i, errEOF
	}
	switch ch := c.in[i]; {
	case ch == '"':
		j, _, err := c.str(i)
		return j, err
	case ch == '{':
		return c.object(i, depth+1)
	case ch == '[':
		return c.array(i, depth+1)
	case ch == '-' || '0' <= ch && ch <= '9':
		return c.number(i)
	case ch == 't':
		return c.literal(i, "true")
	case ch == 'f':
		return c.literal(i, "false")
	case ch == 'n':
		return c.literal(i, "null")
	}
	return i, c.unexpected(i, "a JSON value")
}

func (c *canon) literal(i int, lit string) (int, error) {
	for k := 0; k < len(lit); k++ {
		if i+k >= len(c.in) || c.in[i+k] != lit[k] {
			return i + k, c.unexpected(i+k, "the literal "+lit)
		}
	}
	c.out = append(c.out, lit...)
	return i + len(lit), nil
}

// number checks the number at i against JSON's grammar and copies it as
// written.
func (c *canon) number(i int) (int, error) {
	in, start := c.in, i
	digits := func(i int) int {
		for i < len(in) && '0' <= in[i] && in[i] <= '9' {
			i++
		}
		return i
	}
	if in[i] == '-' {
		i++
	}
	switch {
	case i < len(in) && in[i] == '0':
		i++
	case i < len(in) && '1' <= in[i] && in[i] <= '9':
		i = digits(i + 1)
	default:
		return i, c.unexpected(i, "a digit")
	}
	if i < len(in) && in[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return j, c.unexpected(j, "a digit after the decimal point")
		}
		i = j
	}
	if i < len(in) && (in[i] == 'e' || in[i] == 'E') {
		i++
		if i < len(in) && (in[i] == '+' || in[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return j, c.unexpected(j, "a digit in the exponent")
		}
		i = j
	}
	c.out = append(c.out, in[start:i]...)
	return i, nil
}

func (c *canon) array(i, depth int) (int, error) {
	if depth > canonMaxDepth {
		return i, fmt.Errorf("arrays and objects nested deeper than %d at offset %d", canonMaxDepth, i)
	}
	c.out = append(c.out, '[')
	if i = skipSpace(c.in, i+1); i < len(c.in) && c.in[i] == ']' {
		c.out = append(c.out, ']')
		return i + 1, nil
	}
	for {
		var err error
		if i, err = c.value(i, depth); err != nil {
			return i, err
		}
		i = skipSpace(c.in, i)
		if i >= len(c.in) {
			return i, errEOF
		}
		switch c.in[i] {
		case ',':
			c.out = append(c.out, ',')
			i++
		case ']':
			c.out = append(c.out, ']')
			return i + 1, nil
		default:
			return i, c.unexpected(i, "',' or ']' after an array element")
		}
	}
}

func (c *canon) object(i, depth int) (int, error) {
	if depth > canonMaxDepth {
		return i, fmt.Errorf("arrays and objects nested deeper than %d at offset %d", canonMaxDepth, i)
	}
	c.out = append(c.out, '{')
	region, base := len(c.out), len(c.members)
	if i = skipSpace(c.in, i+1); i < len(c.in) && c.in[i] == '}' {
		c.out = append(c.out, '}')
		return i + 1, nil
	}
	for {
		i = skipSpace(c.in, i)
		if i >= len(c.in) || c.in[i] != '"' {
			return i, c.unexpected(i, "a string key")
		}
		m := member{start: len(c.out), in: i}
		var err error
		if i, m.esc, err = c.str(i); err != nil {
			return i, err
		}
		m.keyEnd = len(c.out)
		if m.esc {
			m.k0 = len(c.keys)
			c.keys = unescape(c.keys, c.out[m.start+1:m.keyEnd-1])
			m.k1 = len(c.keys)
		}
		if i = skipSpace(c.in, i); i >= len(c.in) || c.in[i] != ':' {
			return i, c.unexpected(i, "':' after an object key")
		}
		c.out = append(c.out, ':')
		if i, err = c.value(i+1, depth); err != nil {
			return i, err
		}
		m.end = len(c.out)
		c.members = append(c.members, m)
		i = skipSpace(c.in, i)
		if i >= len(c.in) {
			return i, errEOF
		}
		if c.in[i] == '}' {
			break
		}
		if c.in[i] != ',' {
			return i, c.unexpected(i, "',' or '}' after an object member")
		}
		c.out = append(c.out, ',')
		i++
	}
	if err := c.sortMembers(base, region); err != nil {
		return i, err
	}
	c.members = c.members[:base]
	c.out = append(c.out, '}')
	return i + 1, nil
}

// sortMembers puts the members of the object that begins at out[region]
// (members[base:]) in key order, and refuses a key that is there twice.
func (c *canon) sortMembers(base, region int) error {
	ms := c.members[base:]
	sorted := true
	for j := 1; j < len(ms); j++ {
		switch bytes.Compare(c.key(&ms[j-1]), c.key(&ms[j])) {
		case 0:
			return c.duplicate(&ms[j-1], &ms[j])
		case 1:
			sorted = false
		}
	}
	if sorted {
		// Most objects: those written by encoding/json from a map, or
		// canonical already.
		return nil
	}
	slices.SortFunc(ms, func(a, b member) int { return bytes.Compare(c.key(&a), c.key(&b)) })
	for j := 1; j < len(ms); j++ {
		if bytes.Equal(c.key(&ms[j-1]), c.key(&ms[j])) {
			return c.duplicate(&ms[j-1], &ms[j])
		}
	}
	// Rewrite the region in the new order; its length does not change,
	// so the offsets of enclosing objects' members stay right.
	c.scratch = append(c.scratch[:0], c.out[region:]...)
	c.out = c.out[:region]
	for j := range ms {
		if j > 0 {
			c.out = append(c.out, ',')
		}
		c.out = append(c.out, c.scratch[ms[j].start-region:ms[j].end-region]...)
	}
	return nil
}

func (c *canon) duplicate(a, b *member) error {
	return &DuplicateKeyError{Key: string(c.key(a)), Offset: max(a.in, b.in)}
}

// str writes the string at i encoded as encoding/json encodes it, and
// returns the offset after it and whether the encoding has an escape.
func (c *canon) str(i int) (int, bool, error) {
	in := c.in
	c.out = append(c.out, '"')
	i++
	start, esc := i, false
	for i < len(in) {
		ch := in[i]
		if ch >= 0x20 && ch < utf8.RuneSelf && ch != '"' && ch != '\\' {
			i++
			continue
		}
		if ch >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(in[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				return i, false, fmt.Errorf("invalid UTF-8 in a string at offset %d", i)
			case r == '\u2028' || r == '\u2029':
				c.out = append(c.out, in[start:i]...)
				c.out = appendRune(c.out, r)
				esc = true
				start = i + size
			}
			i += size
			continue
		}
		c.out = append(c.out, in[start:i]...)
		switch ch {
		case '"':
			c.out = append(c.out, '"')
			return i + 1, esc, nil
		case '\\':
			r, j, err := c.escape(i)
			if err != nil {
				return j, false, err
			}
			c.out = appendRune(c.out, r)
			esc = esc || r < 0x20 || r == '"' || r == '\\' || r == '\u2028' || r == '\u2029'
			i, start = j, j
		default:
			return i, false, fmt.Errorf("control character 0x%02x in a string at offset %d (escape it)", ch, i)
		}
	}
	return i, false, errEOF
}

// escape decodes the escape sequence at in[i] ('\\') and returns its rune
// and the offset after it; a surrogate pair is one rune.
func (c *canon) escape(i int) (rune, int, error) {
	in := c.in
	if i+1 >= len(in) {
		return 0, len(in), errEOF
	}
	switch in[i+1] {
	case '"', '\\', '/':
		return rune(in[i+1]), i + 2, nil
	case 'b':
		return '\b', i + 2, nil
	case 'f':
		return '\f', i + 2, nil
	case 'n':
		return '\n', i + 2, nil
	case 'r':
		return '\r', i + 2, nil
	case 't':
		return '\t', i + 2, nil
	case 'u':
		r, err := c.hex4(i + 2)
		if err != nil {
			return 0, i, err
		}
		switch {
		case r < 0xd800 || r > 0xdfff:
			return r, i + 6, nil
		case r <= 0xdbff && i+7 < len(in) && in[i+6] == '\\' && in[i+7] == 'u':
			lo, err := c.hex4(i + 8)
			if err != nil {
				return 0, i + 6, err
			}
			if 0xdc00 <= lo && lo <= 0xdfff {
				return 0x10000 + (r-0xd800)<<10 + (lo - 0xdc00), i + 12, nil
			}
		}
		return 0, i, fmt.Errorf("lone UTF-16 surrogate %s in a string at offset %d", in[i:i+6], i)
	}
	return 0, i, c.unexpected(i+1, `an escape (\", \\, \/, \b, \f, \n, \r, \t or \uXXXX)`)
}

// hex4 decodes the four hex digits at in[i].
func (c *canon) hex4(i int) (rune, error) {
	var r rune
	for k := i; k < i+4; k++ {
		if k >= len(c.in) {
			return 0, errEOF
		}
		ch := c.in[k]
		switch {
		case '0' <= ch && ch <= '9':
			ch -= '0'
		case 'a' <= ch && ch <= 'f':
			ch -= 'a' - 10
		case 'A' <= ch && ch <= 'F':
			ch -= 'A' - 10
		default:
			return 0, c.unexpected(k, `a hex digit in \uXXXX`)
		}
		r = r<<4 | rune(ch)
	}
	return r, nil
}

const hexDigits = "0123456789abcdef"

// appendRune appends r to a JSON string as encoding/json does with HTML
// escaping off.
func appendRune(b []byte, r rune) []byte {
	switch {
	case r == '"' || r == '\\':
		return append(b, '\\', byte(r))
	case r == '\b':
		return append(b, '\\', 'b')
	case r == '\f':
		return append(b, '\\', 'f')
	case r == '\n':
		return append(b, '\\', 'n')
	case r == '\r':
		return append(b, '\\', 'r')
	case r == '\t':
		return append(b, '\\', 't')
	case r < 0x20:
		return append(b, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf])
	case r == '\u2028' || r == '\u2029':
		return append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
	}
	return utf8.AppendRune(b, r)
}

// unescape appends the decoded bytes of s, a string as str writes it
// (without quotes), to b. Only the escapes appendRune writes occur in it.
func unescape(b, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		i++
		switch s[i] {
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			var r rune
			for _, h := range s[i+1 : i+5] {
				r = r<<4 | rune(strings.IndexByte(hexDigits, h))
			}
			b = utf8.AppendRune(b, r)
			i += 4
		default: // '"' or '\\'
			b = append(b, s[i])
		}
	}
	return b
}
