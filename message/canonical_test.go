package message

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// orderStart is the order saga's start request value of DESIGN.md, as
// written there (its keys are not sorted).
const orderStart = `{"order_id":"o-1","customer_id":"c-1","amount_cents":4599,"currency":"USD",` +
	`"items":[{"sku":"sku-1","qty":2}],"ship_to":{"country":"DE","city":"Berlin"}}`

func TestCanonical(t *testing.T) {
	for _, tc := range []struct {
		name string
		ins  []string // each gives want
		want string
	}{
		{"key order", []string{`{"b":1,"a":2}`, `{"a":2,"b":1}`, " {\n\t\"a\" : 2 ,\r\n \"b\" : 1 } "}, `{"a":2,"b":1}`},
		{"order saga start", []string{orderStart,
			`{"ship_to":{"city":"Berlin","country":"DE"},"items":[{"qty":2,"sku":"sku-1"}],"currency":"USD","amount_cents":4599,"customer_id":"c-1","order_id":"o-1"}`},
			`{"amount_cents":4599,"currency":"USD","customer_id":"c-1","items":[{"qty":2,"sku":"sku-1"}],"order_id":"o-1","ship_to":{"city":"Berlin","country":"DE"}}`},
		{"nested objects and arrays", []string{`{"z":{"y":[{"b":1,"a":[true,false,null]}],"x":{}},"a":[]}`, `{ "a" : [ ] , "z" : { "x" : { } , "y" : [ { "a" : [ true , false , null ] , "b" : 1 } ] } }`},
			`{"a":[],"z":{"x":{},"y":[{"a":[true,false,null],"b":1}]}}`},
		{"array order kept", []string{`[3, 1, 2]`}, `[3,1,2]`},
		{"keys in byte order", []string{`{"é":1,"z":2,"Z":3,"aa":4,"a":5,"":6}`}, `{"":6,"Z":3,"a":5,"aa":4,"z":2,"é":1}`},
		{"keys compared decoded", []string{`{"#":1,"\"q":2,"!":3}`, `{"\u0023":1,"\u0022q":2,"\u0021":3}`}, `{"!":3,"\"q":2,"#":1}`},
		{"keys with control characters", []string{`{"a\u0000":1,"a":2,"\n":3}`}, `{"\n":3,"a":2,"a\u0000":1}`},
		{"1.0", []string{`1.0`, ` 1.0 `}, `1.0`},
		{"1e3", []string{`1e3`}, `1e3`},
		{"1E+3", []string{`1E+3`}, `1E+3`},
		{"-0", []string{`-0`}, `-0`},
		{"-0.0e-0", []string{`-0.0e-0`}, `-0.0e-0`},
		{"big integer", []string{`{"n":123456789012345678901234567890}`}, `{"n":123456789012345678901234567890}`},
		{"long fraction", []string{`[0.10000000000000000000000000001]`}, `[0.10000000000000000000000000001]`},
		{"numbers not converted", []string{`[1, 1.0, 10e-1]`}, `[1,1.0,10e-1]`},
		{"escaped and raw é", []string{`"\u00e9"`, `"\u00E9"`, `"é"`}, `"é"`},
		{"solidus", []string{`"\/"`, `"/"`}, `"/"`},
		{"HTML characters unescaped", []string{`"<&>"`, `"\u003c\u0026\u003e"`}, `"<&>"`},
		{"quote and backslash", []string{`"\"\\"`, `"\u0022\u005c"`}, `"\"\\"`},
		{"control characters", []string{`"\u0008\u000c\u000a\u000d\u0009\u0001\u001f"`, `"\b\f\n\r\t\u0001\u001F"`}, `"\b\f\n\r\t\u0001\u001f"`},
		{"line and paragraph separators", []string{"\"\u2028\u2029\"", `"\u2028\u2029"`}, `"\u2028\u2029"`},
		{"surrogate pair", []string{`"\ud83d\ude00"`, `"\uD83D\uDE00"`, `"😀"`}, `"😀"`},
		{"DEL kept raw", []string{"\"\x7f\"", `"\u007f"`}, "\"\x7f\""},
		{"top-level scalars", []string{" true "}, `true`},
		{"null", []string{"null"}, `null`},
		{"empty string", []string{`""`}, `""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, in := range tc.ins {
				got, err := Canonical([]byte(in))
				if err != nil {
					t.Fatalf("Canonical(%s): %v", in, err)
				}
				if string(got) != tc.want {
					t.Errorf("Canonical(%s): got %s, want %s", in, got, tc.want)
				}
			}
		})
	}
}

func TestCanonicalRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", ``, "unexpected end of JSON input"},
		{"only space", " \n", "unexpected end of JSON input"},
		{"unclosed object", `{"a":1`, "unexpected end of JSON input"},
		{"unclosed string", `"abc`, "unexpected end of JSON input"},
		{"missing colon", `{"a" 1}`, `invalid character '1' at offset 5, want ':' after an object key`},
		{"unquoted key", `{a:1}`, `invalid character 'a' at offset 1, want a string key`},
		{"trailing comma in an array", `[1,]`, `invalid character ']' at offset 3, want a JSON value`},
		{"trailing comma in an object", `{"a":1,}`, `invalid character '}' at offset 7, want a string key`},
		{"missing comma", `[1 2]`, `invalid character '2' at offset 3, want ',' or ']' after an array element`},
		{"leading zero", `01`, "data after the JSON value at offset 1"},
		{"leading plus", `+1`, `invalid character '+' at offset 0, want a JSON value`},
		{"fraction without digits", `1.`, "unexpected end of JSON input"},
		{"fraction without integer", `.5`, `invalid character '.' at offset 0`},
		{"exponent without digits", `1e+]`, `invalid character ']' at offset 3, want a digit in the exponent`},
		{"minus alone", `[-]`, `invalid character ']' at offset 2, want a digit`},
		{"short literal", `tru`, "unexpected end of JSON input"},
		{"wrong literal", `nul1`, `invalid character '1' at offset 3, want the literal null`},
		{"unknown escape", `"\x"`, `invalid character 'x' at offset 2, want an escape`},
		{"short unicode escape", `"\u12"`, `invalid character '"' at offset 5, want a hex digit`},
		{"raw newline in a string", "\"a\nb\"", "control character 0x0a in a string at offset 2"},
		{"trailing value", `{"a":1} {}`, "data after the JSON value at offset 8"},
		{"trailing garbage", `[1]x`, "data after the JSON value at offset 3"},
		{"two numbers", `1 2`, "data after the JSON value at offset 2"},
		{"invalid UTF-8 in a string", "\"a\xff\"", "invalid UTF-8 in a string at offset 2"},
		{"invalid UTF-8 in a key", "{\"\xc3\":1}", "invalid UTF-8 in a string at offset 2"},
		{"truncated UTF-8 at the end", "\"\xe2\x82", "invalid UTF-8 in a string at offset 1"},
		{"UTF-8 encoded surrogate", "\"\xed\xa0\x80\"", "invalid UTF-8 in a string at offset 1"},
		{"invalid UTF-8 outside strings", "[\xff]", "invalid byte 0xff at offset 1, want a JSON value"},
		{"byte order mark", "\ufeff{}", "invalid byte 0xef at offset 0"},
		{"lone high surrogate", `"\ud800"`, `lone UTF-16 surrogate \ud800 in a string at offset 1`},
		{"lone low surrogate", `"\uDC00"`, `lone UTF-16 surrogate \uDC00 in a string at offset 1`},
		{"high surrogate and a letter", `"\ud800\u0041"`, `lone UTF-16 surrogate \ud800 in a string at offset 1`},
		{"too deep", strings.Repeat("[", 10001) + strings.Repeat("]", 10001), "nested deeper than 10000 at offset 10000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonical([]byte(tc.in))
			if err == nil {
				t.Fatalf("Canonical(%q): got %s, want an error containing %q", tc.in, got, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Canonical(%q): got error %q, want it to contain %q", tc.in, err, tc.want)
			}
			if got != nil {
				t.Errorf("Canonical(%q): got %q with the error, want nil", tc.in, got)
			}
		})
	}
}

func TestCanonicalDuplicateKey(t *testing.T) {
	for _, tc := range []struct {
		name, in, key string
		offset        int
	}{
		{"adjacent", `{"a":1,"a":2}`, "a", 7},
		{"same value", `{"a":1,"a":1}`, "a", 7},
		{"apart", `{"b":1,"a":2,"b":3}`, "b", 13},
		{"written otherwise", `{"a":1,"\u0061":2}`, "a", 7},
		{"escaped quote", `{"\"":1,"\u0022":2}`, `"`, 8},
		{"nested", `{"x":[{"k":1,"k":{}}]}`, "k", 13},
		{"in a sorted object", `{"a":1,"b":{"c":1,"c":2}}`, "c", 18},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Canonical([]byte(tc.in))
			var dup *DuplicateKeyError
			if !errors.As(err, &dup) {
				t.Fatalf("Canonical(%s): got error %v, want a *DuplicateKeyError", tc.in, err)
			}
			if dup.Key != tc.key || dup.Offset != tc.offset {
				t.Errorf("Canonical(%s): got key %q at offset %d, want %q at %d", tc.in, dup.Key, dup.Offset, tc.key, tc.offset)
			}
		})
	}
}

// TestCanonicalAllocs holds Canonical to the one allocation its doc
// promises for an ordinary start request.
func TestCanonicalAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector adds allocations and empties sync.Pool at random")
	}
	in := []byte(orderStart)
	Canonical(in) // fill the pool
	if got := testing.AllocsPerRun(100, func() { _, _ = Canonical(in) }); got > 1 {
		t.Errorf("got %v allocations per call, want 1", got)
	}
}

// reference is the canonical form as encoding/json gives it (the HTTP
// API's form before Canonical): decode with UseNumber, encode with sorted
// map keys and HTML escaping off. It accepts what Canonical refuses on
// purpose (duplicate keys, invalid UTF-8, lone surrogates) by fixing it.
func reference(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("data after the JSON value")
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

func decode(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return v
}

// FuzzCanonical checks that Canonical is idempotent, that its output is
// JSON holding the input's value, that it agrees with encoding/json
// wherever both accept the input, and that it refuses only what it
// refuses on purpose.
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{
		orderStart, `{"b":1,"a":[1.0,1e3,-0,{"d":null,"c":true}]}`, `"\u00e9\ud83d\ude00\u2028<>&\/\b"`,
		`{"#":1,"\"q":2,"!":3}`, `{"a":1,"a":2}`, "\"\xff\"", `"\ud800"`, `[1]x`, `123456789012345678901234567890`,
		`{"a\u0000":1,"a":2}`, ` [ ] `, `{}`, `{"k":{"k":{"k":{}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonical(in)
		ref, refErr := reference(in)
		if err != nil {
			if refErr != nil {
				return
			}
			var dup *DuplicateKeyError
			if errors.As(err, &dup) || !utf8.Valid(in) || strings.Contains(err.Error(), "surrogate") {
				return
			}
			t.Fatalf("Canonical(%q): %v; encoding/json accepts it (%s)", in, err, ref)
		}
		if refErr != nil {
			t.Fatalf("Canonical(%q) = %s; encoding/json refuses it: %v", in, out, refErr)
		}
		if !bytes.Equal(out, ref) {
			t.Errorf("Canonical(%q): got %s, want %s as encoding/json writes it", in, out, ref)
		}
		if !json.Valid(out) {
			t.Fatalf("Canonical(%q) = %q: not valid JSON", in, out)
		}
		again, err := Canonical(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Errorf("Canonical(%q) = %s, then got %s, %v, want it unchanged", in, out, again, err)
		}
		if got, want := decode(t, out), decode(t, in); !reflect.DeepEqual(got, want) {
			t.Errorf("Canonical(%q) = %s decodes to %#v, want %#v", in, out, got, want)
		}
	})
}

// BenchmarkCanonical canonicalizes the order saga's start request, as
// DESIGN.md writes it (keys out of order) and in canonical form already.
func BenchmarkCanonical(b *testing.B) {
	canonical, err := Canonical([]byte(orderStart))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		in   []byte
	}{
		{"design", []byte(orderStart)},
		{"canonical", canonical},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				if _, err := Canonical(bc.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
