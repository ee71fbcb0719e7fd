package daemon

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// apiMaxIDBytes bounds a saga id, which travels in the key and a header of
// every record of the saga, and in its Redis keys.
const apiMaxIDBytes = 128

// idRule says in words which saga ids the API accepts.
const idRule = "a saga id is 1 to 128 characters of A-Z, a-z, 0-9 and . _ : @ -, not starting with '.'"

// checkID returns nil when id is one the API accepts (idRule), and an error
// that says what is wrong with it otherwise. The rule keeps ids that a
// terminal, a log line, a URL or a Redis key pattern would show as
// something else (NUL, CR and LF, ESC, U+202E, '/', "..") out of the
// system; the engine and package client take any UTF-8, so sagas started
// through Kafka may have ids the API cannot name.
func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("the saga id is empty: " + idRule)
	case len(id) > apiMaxIDBytes:
		return fmt.Errorf("the saga id is %d bytes long, the limit is %d: %s", len(id), apiMaxIDBytes, idRule)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == ':', c == '@', c == '-':
			continue
		case c == '.' && i > 0:
			continue
		}
		return fmt.Errorf("the saga id has %s at byte %d: %s", describeChar(id[i:]), i, idRule)
	}
	return nil
}

// controlNames names the control characters an error is likely to meet.
var controlNames = map[rune]string{0: "NUL", '\t': "TAB", '\n': "LF", '\r': "CR", 0x1b: "ESC", 0x7f: "DEL"}

// describeChar describes the first character of s for an error message,
// without writing it as it is.
func describeChar(s string) string {
	r, size := utf8.DecodeRuneInString(s)
	switch {
	case r == utf8.RuneError && size <= 1:
		return fmt.Sprintf("the byte 0x%02X (not UTF-8)", s[0])
	case r == '.':
		return "a leading '.'"
	case r == '/':
		return "'/' (%2F)"
	case controlNames[r] != "":
		return fmt.Sprintf("%U (%s)", r, controlNames[r])
	case r < utf8.RuneSelf && unicode.IsPrint(r):
		return fmt.Sprintf("%q", r)
	}
	return fmt.Sprintf("%U", r)
}

// checkContentType returns an error unless the request's body is declared
// application/json (in UTF-8, if a charset is given). A request with no
// body at all may leave Content-Type out. Browsers send cross-site forms
// as application/x-www-form-urlencoded, multipart/form-data or text/plain
// without asking first, and JSON only after a CORS preflight that this API
// does not answer: so no web page can make a visitor's browser start or
// compensate a saga, even with --api-insecure-no-auth.
func checkContentType(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" && r.ContentLength == 0 {
		return nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	switch {
	case ct == "":
		return errors.New("the request has a body but no Content-Type: send Content-Type: application/json")
	case err != nil || mt != "application/json":
		return fmt.Errorf("Content-Type %s is not application/json: the body must be JSON, sent as application/json", quoteShort(ct))
	case params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8"):
		return fmt.Errorf("charset %s: the body must be UTF-8 (Content-Type: application/json, or with charset=utf-8)", quoteShort(params["charset"]))
	}
	return nil
}

// readBody reads a request body of at most limit bytes, or answers 413 (too
// large) or 400 (not read to its end). A body of known length is read into
// one buffer of that length.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", limit))
		return nil, false
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	var b []byte
	var err error
	if r.ContentLength >= 0 {
		b = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, b)
	} else {
		b, err = io.ReadAll(body)
	}
	var tl *http.MaxBytesError
	switch {
	case errors.As(err, &tl):
		return tooLarge()
	case err != nil:
		// The cause (a connection reset, the server's read timeout)
		// names addresses: not for the caller.
		writeError(w, http.StatusBadRequest, "the body could not be read to its end: the connection closed, or the body came slower than the server's read timeout")
		return nil, false
	}
	return b, true
}

// checkReason returns an error unless reason can be a compensate request's
// reason: it goes into a Kafka header, the saga's state and events, its
// audit record and operators' terminals.
func checkReason(reason string) error {
	if len(reason) > apiMaxReasonBytes {
		return fmt.Errorf("the reason is %d bytes long, the limit is %d", len(reason), apiMaxReasonBytes)
	}
	for i, r := range reason {
		if unicode.IsControl(r) || (0x202a <= r && r <= 0x202e) || (0x2066 <= r && r <= 0x2069) {
			return fmt.Errorf("the reason has %s at byte %d: write it on one line, without control or bidirectional-override characters", describeChar(reason[i:]), i)
		}
	}
	return nil
}

// checkFieldNames returns an error when an object key of value, a JSON
// document in canonical form (message.Canonical: valid, no space), names a
// field of t, the Go type it is decoded into, only when letter case is
// ignored: encoding/json would decode {"ORDER_ID": …} into the field
// order_id, and the stored start would keep a spelling no reader of the
// type expects. It follows t through struct fields, slices, arrays, maps
// and pointers, and stops at interfaces and types that decode themselves
// (json.Unmarshaler, encoding.TextUnmarshaler). Keys that name no field at
// all are left to the decoder (which refuses them, DisallowUnknownFields);
// a nil t checks nothing.
func checkFieldNames(value []byte, t reflect.Type) error {
	if t == nil || len(value) == 0 {
		return nil
	}
	w := nameWalker{in: value}
	_, err := w.value(0, t)
	return err
}

// nameWalker walks a document in canonical form beside a Go type.
type nameWalker struct {
	in []byte
	// path holds the keys (and "[]" for array elements) from the root
	// to the value being walked, for the error.
	path []string
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// value walks the value at offset i, decoded into t (nil: anything), and
// returns the offset after it.
func (w *nameWalker) value(i int, t reflect.Type) (int, error) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (t.Kind() == reflect.Interface || reflect.PointerTo(t).Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler)) {
		t = nil
	}
	switch w.in[i] {
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = jsonFields(t)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		i++
		if w.in[i] == '}' {
			return i + 1, nil
		}
		for {
			key, next := w.key(i)
			ft := elem
			if fields != nil {
				var ok bool
				if ft, ok = fields[key]; !ok {
					if want := foldMatch(fields, key); want != "" {
						return 0, fmt.Errorf("the body has the key %s where %s is expected: field names are case-sensitive; write %s",
							quoteShort(w.where(key)), quoteShort(w.where(want)), quoteShort(want))
					}
				}
			}
			w.path = append(w.path, key)
			var err error
			if i, err = w.value(next, ft); err != nil {
				return 0, err
			}
			w.path = w.path[:len(w.path)-1]
			if w.in[i] == ',' {
				i++
				continue
			}
			return i + 1, nil // '}'
		}
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		i++
		if w.in[i] == ']' {
			return i + 1, nil
		}
		w.path = append(w.path, "[]")
		defer func() { w.path = w.path[:len(w.path)-1] }()
		for {
			var err error
			if i, err = w.value(i, elem); err != nil {
				return 0, err
			}
			if w.in[i] == ',' {
				i++
				continue
			}
			return i + 1, nil // ']'
		}
	case '"':
		_, end := w.str(i)
		return end, nil
	}
	// A number, true, false or null: up to the next delimiter.
	for i < len(w.in) && !slices.Contains([]byte(",]}"), w.in[i]) {
		i++
	}
	return i, nil
}

// where is key's path from the root: ship_to.country, items[].sku.
func (w *nameWalker) where(key string) string {
	var b strings.Builder
	for _, p := range w.path {
		if p != "[]" && b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	if b.Len() > 0 {
		b.WriteByte('.')
	}
	b.WriteString(key)
	return b.String()
}

// key reads the object key at i and returns it decoded, and the offset of
// its value (after the colon).
func (w *nameWalker) key(i int) (string, int) {
	raw, end := w.str(i)
	key := string(raw)
	if slices.Contains(raw, '\\') {
		// Rare in canonical form (control characters, '"', '\\', U+2028
		// and U+2029 only): let encoding/json decode it.
		_ = json.Unmarshal(w.in[i:end], &key)
	}
	return key, end + 1 // ':'
}

// str returns the contents of the string at i (between its quotes, still
// escaped) and the offset after its closing quote.
func (w *nameWalker) str(i int) ([]byte, int) {
	j := i + 1
	for j < len(w.in) {
		switch w.in[j] {
		case '\\':
			j += 2
			continue
		case '"':
			return w.in[i+1 : j], j + 1
		}
		j++
	}
	return w.in[i+1:], len(w.in)
}

// foldMatch returns the field name that equals key when case is ignored
// (as encoding/json matches them), or "".
func foldMatch(fields map[string]reflect.Type, key string) string {
	var names []string
	for name := range fields {
		if strings.EqualFold(name, key) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	return names[0]
}

// fieldCache holds jsonFields' answers by type.
var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields returns the JSON names of struct type t's fields, as
// encoding/json reads them (tag names, Go names, fields of embedded
// structs promoted), each with its type. Where two fields have one name,
// the shallower one's type is kept.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := make(map[string]reflect.Type)
	depth := make(map[string]int)
	seen := make(map[reflect.Type]bool)
	var walk func(t reflect.Type, d int)
	walk = func(t reflect.Type, d int) {
		if seen[t] {
			return
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			ft := f.Type
			if f.Anonymous {
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if name == "" && ft.Kind() == reflect.Struct {
					walk(ft, d+1)
					continue
				}
				if !f.IsExported() {
					continue
				}
			} else if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if old, ok := depth[name]; !ok || d < old {
				m[name], depth[name] = f.Type, d
			}
		}
	}
	walk(t, 0)
	fieldCache.Store(t, m)
	return m
}
